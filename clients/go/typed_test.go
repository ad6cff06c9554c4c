package shoal_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"

	shoal "github.com/shoal-dev/shoal/clients/go"
	"github.com/stretchr/testify/require"
)

// Functions of the tests, registered in every process of the test clusters.
var (
	square = shoal.Func("test_square", func(ctx context.Context, x int64) (int64, error) { return x * x, nil })
	total  = shoal.Func("test_total", func(ctx context.Context, xs []int64) (int64, error) {
		var s int64
		for _, x := range xs {
			s += x
		}
		return s, nil
	})
	affine = shoal.Func3("test_affine", func(ctx context.Context, a float64, x int64, b float64) (float64, error) {
		return a*float64(x) + b, nil
	})
	label = shoal.Func2("test_label", func(ctx context.Context, prefix string, xs []int64) (string, error) {
		return fmt.Sprint(prefix, xs), nil
	})
	seven = shoal.Func0("test_seven", func(ctx context.Context) (int, error) { return 7, nil })
	// point goes through msgpack as a map and comes back as a struct
	shift = shoal.Func2("test_shift", func(ctx context.Context, p point, d int32) (point, error) {
		return point{X: p.X + int64(d), Y: p.Y + float64(d), Tags: append(slices.Clone(p.Tags), "shifted")}, nil
	})
	pid = shoal.Func("test_pid", func(ctx context.Context, _ int64) (int, error) { return os.Getpid(), nil })
	// flaky fails until it has run `fails` times before (counted in a file), then says how
	// many runs it took
	flaky = shoal.Func2("test_flaky", func(ctx context.Context, path string, fails int) (int, error) {
		b, _ := os.ReadFile(path)
		n, _ := strconv.Atoi(string(b))
		n++
		if err := os.WriteFile(path, []byte(strconv.Itoa(n)), 0o600); err != nil {
			return 0, err
		}
		if n <= fails {
			return 0, fmt.Errorf("run %d fails", n)
		}
		return n, nil
	})
)

type point struct {
	X    int64
	Y    float64
	Tags []string
}

func TestTypedMapReduce(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	xs := make([]int64, 200)
	var want int64
	for i := range xs {
		xs[i] = int64(i) - 50
		want += xs[i] * xs[i]
	}
	g := shoal.NewGraph()
	squares := shoal.Map(g, square, xs)
	sum := total.Call(g, shoal.Collect(squares))
	got, err := shoal.Get(ctx, c, g, sum)
	require.NoError(t, err)
	require.Equal(t, want, got)

	// the squares themselves, in order, from both workers
	futs, err := shoal.SubmitAll(ctx, c, g, squares)
	require.NoError(t, err)
	vals, err := shoal.Gather(ctx, futs)
	require.NoError(t, err)
	for i, v := range vals {
		require.Equal(t, xs[i]*xs[i], v, "square of %d", xs[i])
	}
	for _, f := range futs {
		f.Release()
	}
}

func TestTypedArgumentsOfEveryKind(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	g := shoal.NewGraph()
	n := seven.Call(g)
	// literal, reference and literal mixed, numbers converted to the declared types
	y := affine.Call(g, shoal.Lit(0.5), shoal.RefOf[int64](n.Key()), shoal.Lit(1.25))
	got, err := shoal.Get(ctx, c, g, y)
	require.NoError(t, err)
	require.Equal(t, 4.75, got)

	// a literal and a collected group in one call (the collect form)
	parts := shoal.MapRefs(g, square, []shoal.Ref[int64]{shoal.RefOf[int64](n.Key()), square.Call(g, shoal.Lit[int64](3))})
	s, err := shoal.Get(ctx, c, g, label.Call(g, shoal.Lit("squares "), shoal.Collect(parts)))
	require.NoError(t, err)
	require.Equal(t, "squares [49 81]", s) // 7², then (3²)²

	// an empty collection is an empty slice
	s, err = shoal.Get(ctx, c, g, label.Call(g, shoal.Lit("none "), shoal.Collect[int64](nil)))
	require.NoError(t, err)
	require.Equal(t, "none []", s)

	// a struct through msgpack both ways
	p, err := shoal.Get(ctx, c, g, shift.Call(g, shoal.Lit(point{X: 1, Y: 2.5, Tags: []string{"a"}}), shoal.Lit[int32](10)))
	require.NoError(t, err)
	require.Equal(t, point{X: 11, Y: 12.5, Tags: []string{"a", "shifted"}}, p)
}

func TestNamedKeysAndAnnotations(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	ws, err := c.Info(ctx)
	require.NoError(t, err)
	require.Len(t, ws, 2)
	g := shoal.NewGraph()
	// restricted to each worker in turn: the task runs in that worker's process
	for _, w := range ws {
		r := pid.Call(g, shoal.Lit[int64](0), shoal.OnWorkers(w.Name), shoal.Named("pid-on-"+w.Name), shoal.Priority(5))
		require.Equal(t, shoal.Key("pid-on-"+w.Name), r.Key())
		got, err := shoal.Get(ctx, c, g, r)
		require.NoError(t, err)
		require.Equal(t, w.PID, got, "task restricted to %s", w.Name)
	}
	// Map with Named numbers the keys
	refs := shoal.Map(g, square, []int64{1, 2}, shoal.Named("sq"))
	require.Equal(t, []shoal.Key{"sq-0", "sq-1"}, []shoal.Key{refs[0].Key(), refs[1].Key()})
	// naming two tasks alike fails the graph before anything is sent
	square.Call(g, shoal.Lit[int64](5), shoal.Named("sq-0"))
	require.Error(t, g.Err())
	_, err = shoal.Get(ctx, c, g, refs[0])
	require.ErrorContains(t, err, `"sq-0" is used twice`)
}

func TestRetries(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	g := shoal.NewGraph()
	ok := flaky.Call(g, shoal.Lit(dir+"/a"), shoal.Lit(2), shoal.Retries(2))
	runs, err := shoal.Get(ctx, c, g, ok)
	require.NoError(t, err)
	require.Equal(t, 3, runs)
	notEnough := flaky.Call(g, shoal.Lit(dir+"/b"), shoal.Lit(2), shoal.Retries(1))
	_, err = shoal.Get(ctx, c, g, notEnough)
	require.ErrorIs(t, err, shoal.ErrTaskFailed)
	require.ErrorContains(t, err, "run 2 fails")
}

func TestWaitProgressAsCompleted(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	g := shoal.NewGraph()
	xs := make([]int64, 50)
	for i := range xs {
		xs[i] = int64(i)
	}
	futs, err := shoal.SubmitAll(ctx, c, g, shoal.Map(g, square, xs))
	require.NoError(t, err)
	var mu sync.Mutex
	var seen []int
	err = shoal.Wait(ctx, futs, shoal.Progress(func(done, total int) {
		mu.Lock()
		defer mu.Unlock()
		require.Equal(t, len(xs), total)
		seen = append(seen, done)
	}))
	require.NoError(t, err)
	mu.Lock()
	seen = slices.Clone(seen) // a late call (a failure) must not find mu held by a failed test
	mu.Unlock()
	require.Len(t, seen, len(xs), "every progress call made before Wait returned")
	slices.Sort(seen)
	require.Equal(t, 1, seen[0])
	require.Equal(t, len(xs), seen[len(seen)-1])

	got := map[shoal.Key]int64{}
	for f := range shoal.AsCompleted(ctx, futs) {
		v, err := f.Get(ctx)
		require.NoError(t, err)
		got[f.Key()] = v
	}
	require.Len(t, got, len(xs))
	for i, f := range futs {
		require.Equal(t, xs[i]*xs[i], got[f.Key()])
		f.Release()
	}
}

func TestScatter(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	futs, err := shoal.Scatter(ctx, c, int64(3), int64(4), int64(5))
	require.NoError(t, err)
	refs := make([]shoal.Ref[int64], len(futs))
	for i, f := range futs {
		refs[i] = f.Ref()
		defer f.Release()
	}
	g := shoal.NewGraph()
	got, err := shoal.Get(ctx, c, g, total.Call(g, shoal.Collect(shoal.MapRefs(g, square, refs))))
	require.NoError(t, err)
	require.Equal(t, int64(9+16+25), got)
	v, err := futs[1].Get(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(4), v)
}

func TestUnknownFunctionIsRefused(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	g := shoal.NewGraph()
	missing := shoal.Extern[int64, int64]("no_such_function")
	_, err := shoal.Get(ctx, c, g, missing.Call(g, shoal.Lit[int64](1)))
	require.ErrorIs(t, err, shoal.ErrUnknownFunction)
	require.ErrorContains(t, err, "no_such_function")
	var te *shoal.TaskError
	require.True(t, errors.As(err, &te))
}
