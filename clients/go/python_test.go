package shoal_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	shoal "github.com/shoal-dev/shoal/clients/go"
	"github.com/stretchr/testify/require"
)

// Python functions called from Go, run by the workers' Python executors.
var (
	pySqrt  = shoal.Python[float64, float64]("math.sqrt")
	pyMean  = shoal.Python[[]int64, float64]("statistics:fmean")
	pyTable = shoal.Python[map[string]any, arrow.RecordBatch]("pyarrow.table")
	pyInt   = shoal.Python[string, int64]("builtins.int")
	pyJoin  = shoal.Python2[string, []string, string]("shoal_test_helpers.join") // no such module
)

// needPython skips unless $SHOAL_PYTHON (set by the Makefile to the project's venv) can run
// Shoal's executor with pyarrow.
func needPython(t *testing.T) {
	py := os.Getenv("SHOAL_PYTHON")
	if py == "" {
		t.Skip("SHOAL_PYTHON is not set: no Python interpreter with shoal installed (make test sets it)")
	}
	if out, err := exec.Command(py, "-c", "import shoal.executor, pyarrow, msgpack").CombinedOutput(); err != nil {
		t.Skipf("SHOAL_PYTHON=%s cannot import shoal.executor, pyarrow and msgpack: %v\n%s", py, err, out)
	}
}

func TestPythonTasksFromGo(t *testing.T) {
	needPython(t)
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	g := shoal.NewGraph()

	// Go → Python → Go: a Go result as a Python argument, a Python float back
	y := affine.Call(g, shoal.Lit(2.0), shoal.Lit[int64](8), shoal.Lit(9.0)) // 25
	root, err := shoal.Get(ctx, c, g, pySqrt.Call(g, y))
	require.NoError(t, err)
	require.Equal(t, 5.0, root)

	// a collection of Go results as a Python list
	mean, err := shoal.Get(ctx, c, g, pyMean.Call(g, shoal.Collect(shoal.Map(g, square, []int64{1, 2, 3, 4}))))
	require.NoError(t, err)
	require.Equal(t, 7.5, mean)

	// a Python Arrow table as a Go task's argument
	tbl := pyTable.Call(g, shoal.Lit(map[string]any{"key": []string{"a", "b", "a"}, "value": []int64{1, 2, 3}}))
	sums, err := shoal.Get(ctx, c, g, sumByKey.Call(g, tbl))
	require.NoError(t, err)
	require.Equal(t, map[string]int64{"a": 4, "b": 2}, sums)

	// Python exceptions arrive as task errors naming the exception type
	_, err = shoal.Get(ctx, c, g, pyInt.Call(g, shoal.Lit("twelve")))
	require.ErrorIs(t, err, shoal.ErrTaskFailed)
	var te *shoal.TaskError
	require.ErrorAs(t, err, &te)
	require.Contains(t, te.Type, "ValueError")
	require.Contains(t, te.Message, "twelve")

	_, err = shoal.Get(ctx, c, g, pyJoin.Call(g, shoal.Lit("-"), shoal.Lit([]string{"x"})))
	require.ErrorIs(t, err, shoal.ErrTaskFailed)
	require.ErrorContains(t, err, "shoal_test_helpers")
}
