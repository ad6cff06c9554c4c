package shoal_test

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Wrong argument and result types are compile errors. testdata/compilefail marks each line
// the compiler must refuse with "// WANT:"; testdata/compileok is the same program typed
// right, which must build (so that the failures come from the types, not from the setup).
func TestCompileFail(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two programs")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command in PATH")
	}
	out, err := exec.Command("go", "build", "-o", os.DevNull, "./testdata/compileok").CombinedOutput()
	require.NoError(t, err, "the well-typed control must build:\n%s", out)

	src, err := os.ReadFile("testdata/compilefail/main.go")
	require.NoError(t, err)
	var want []int
	for i, line := range strings.Split(string(src), "\n") {
		if strings.Contains(line, "// WANT:") {
			want = append(want, i+1)
		}
	}
	require.NotEmpty(t, want)

	out, err = exec.Command("go", "build", "-o", os.DevNull, "./testdata/compilefail").CombinedOutput()
	require.Error(t, err, "the ill-typed program built")
	var got []int
	for _, m := range regexp.MustCompile(`main\.go:(\d+):\d+: `).FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.Atoi(m[1])
		got = append(got, n)
	}
	slices.Sort(got)
	require.Equal(t, want, slices.Compact(got), "compiler output:\n%s", out)
}
