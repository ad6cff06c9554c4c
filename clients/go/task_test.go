package shoal_test

import (
	"context"
	"testing"
	"time"

	shoal "github.com/shoal-dev/shoal/clients/go"
	"github.com/stretchr/testify/require"
)

// goFib computes Fibonacci numbers by recursive submission from Go tasks: each task gets the
// worker process's client from its context, submits two tasks and secedes while it waits.
var goFib *shoal.Fn1[int64, int64]

func init() {
	goFib = shoal.Func("test_go_fib", func(ctx context.Context, n int64) (int64, error) {
		if n < 2 {
			return n, nil
		}
		c, err := shoal.TaskClient(ctx)
		if err != nil {
			return 0, err
		}
		g := shoal.NewGraph()
		a := goFib.Call(g, shoal.Lit(n-1))
		b := goFib.Call(g, shoal.Lit(n-2))
		fs, err := shoal.SubmitAll(ctx, c, g, []shoal.Ref[int64]{a, b})
		if err != nil {
			return 0, err
		}
		shoal.Secede(ctx)
		va, err := fs[0].Get(ctx)
		if err != nil {
			return 0, err
		}
		vb, err := fs[1].Get(ctx)
		if err != nil {
			return 0, err
		}
		return va + vb, nil
	})
}

// One worker with one thread: without Secede, fib(3) already waits for ever.
func TestGoTasksSubmitTasks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lc, err := shoal.NewLocalCluster(ctx, shoal.Workers(1), shoal.Threads(1))
	require.NoError(t, err)
	defer lc.Close()
	c := lc.Client()
	g := shoal.NewGraph()
	v, err := shoal.Get(ctx, c, g, goFib.Call(g, shoal.Lit(int64(12))))
	require.NoError(t, err, "cluster log:\n%s", lc.Logs())
	require.Equal(t, int64(144), v)

	_, err = shoal.TaskClient(ctx)
	require.ErrorIs(t, err, shoal.ErrNotInTask)
	shoal.Secede(ctx) // outside a task: nothing
}
