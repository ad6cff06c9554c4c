package shoal

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The repository holds sources, not build outputs: no tracked file is over 1 MB or an ELF
// binary (a committed `shoal` binary once made up most of the repository's pack).
func TestNoBinariesTracked(t *testing.T) {
	out, err := exec.Command("git", "ls-files", "-z").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		st, err := os.Lstat(name)
		if err != nil || !st.Mode().IsRegular() {
			continue // deleted in the work tree, or a link
		}
		if st.Size() > 1<<20 {
			t.Errorf("%s is tracked and %d bytes (over 1 MB): build outputs and data do not belong in git", name, st.Size())
		}
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 4)
		n, _ := f.Read(head)
		f.Close()
		if bytes.Equal(head[:n], []byte("\x7fELF")) {
			t.Errorf("%s is a tracked ELF binary", name)
		}
	}
}
