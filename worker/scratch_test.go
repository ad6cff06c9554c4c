package worker

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// A killed worker's scratch directory is removed by the next worker that starts in the same
// place; a live worker's, and directories this code did not lock, are left alone.
func TestScratchDirsOfGoneWorkersArePurged(t *testing.T) {
	if os.Getenv("SHOAL_SCRATCH_CHILD") != "" {
		t.Skip("this process is the child of another run of this test")
	}
	parent := t.TempDir()
	alive, _, err := newScratchDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer alive.remove()
	dead := lockInChildAndDie(t, parent)
	unmarked := filepath.Join(parent, scratchPrefix+"old")
	if err := os.Mkdir(unmarked, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dead, "1.spill"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	fresh, purged, err := newScratchDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.remove()
	if !slices.Equal(purged, []string{dead}) {
		t.Fatalf("purged %v, want only the dead worker's %s", purged, dead)
	}
	for _, kept := range []string{alive.path, unmarked, fresh.path} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("%s was removed: %v", kept, err)
		}
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the dead worker's directory is still there: %v", err)
	}
	if err := fresh.remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fresh.path); !os.IsNotExist(err) {
		t.Errorf("remove left %s: %v", fresh.path, err)
	}
}

// lockInChildAndDie makes a scratch directory in parent from a child process (this test binary,
// running TestScratchChild), which holds its lock until it is killed; it returns the path.
func lockInChildAndDie(t *testing.T, parent string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestScratchChild$")
	cmd.Env = append(os.Environ(), "SHOAL_SCRATCH_CHILD="+parent)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _ := out.Read(buf) // the child prints its directory once it holds the lock
	path := string(buf[:n])
	if i := len(path) - 1; i >= 0 && path[i] == '\n' {
		path = path[:i]
	}
	if filepath.Dir(path) != parent {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child said %q", path)
	}
	// while it lives, its directory is not stale
	if stale, _ := scratchStale(path); stale {
		t.Error("a live worker's directory looked stale")
	}
	cmd.Process.Kill()
	cmd.Wait()
	return path
}

func TestScratchChild(t *testing.T) {
	parent := os.Getenv("SHOAL_SCRATCH_CHILD")
	if parent == "" {
		t.Skip("run by TestScratchDirsOfGoneWorkersArePurged")
	}
	d, _, err := newScratchDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString(d.path + "\n")
	select {} // hold the lock until killed
}
