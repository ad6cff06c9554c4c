package shoal_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	shoal "github.com/shoal-dev/shoal/clients/go"
	"github.com/stretchr/testify/require"
)

// errNotFound is a sentinel that keeps its identity across the cluster (RegisterError).
var errNotFound = errors.New("test: not found")

// quotaError is an error type whose fields survive the trip (RegisterErrorType).
type quotaError struct {
	User  string
	Limit int
}

func (e *quotaError) Error() string { return fmt.Sprintf("user %s is over quota %d", e.User, e.Limit) }

// unregisteredError travels as its type name and message only.
type unregisteredError struct{ code int }

func (e unregisteredError) Error() string { return fmt.Sprintf("unregistered %d", e.code) }

func init() {
	shoal.RegisterError(errNotFound)
	shoal.RegisterErrorType[*quotaError]()
}

var (
	lookup = shoal.Func("test_lookup", func(ctx context.Context, name string) (string, error) {
		switch name {
		case "missing":
			return "", fmt.Errorf("looking up %q: %w", name, errNotFound)
		case "greedy":
			return "", fmt.Errorf("wrapped: %w", &quotaError{User: name, Limit: 42})
		case "odd":
			return "", unregisteredError{7}
		case "boom":
			var none []int
			return fmt.Sprint(none[len(name)]), nil // an index-out-of-range panic in the task
		}
		return "found " + name, nil
	})
	slow = shoal.Func("test_slow", func(ctx context.Context, seconds float64) (bool, error) {
		select {
		case <-time.After(time.Duration(seconds * float64(time.Second))):
			return true, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	})
)

func TestTaskErrorsKeepTheirTypes(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	get := func(name string) (string, error) {
		g := shoal.NewGraph()
		return shoal.Get(ctx, c, g, lookup.Call(g, shoal.Lit(name)))
	}
	v, err := get("alice")
	require.NoError(t, err)
	require.Equal(t, "found alice", v)

	_, err = get("missing")
	require.ErrorIs(t, err, errNotFound, "a registered sentinel keeps its identity")
	require.ErrorIs(t, err, shoal.ErrTaskFailed)
	require.NotErrorIs(t, err, shoal.ErrPanic)
	require.ErrorContains(t, err, `looking up "missing"`)

	_, err = get("greedy")
	var qe *quotaError
	require.ErrorAs(t, err, &qe, "a registered error type is rebuilt with its fields")
	require.Equal(t, quotaError{User: "greedy", Limit: 42}, *qe)

	_, err = get("odd")
	var te *shoal.TaskError
	require.ErrorAs(t, err, &te)
	require.Equal(t, "task-error", te.Code)
	require.Equal(t, "shoal_test.unregisteredError", te.Type, "the remote Go type is named")
	require.Equal(t, "unregistered 7", te.Message)
	var ue unregisteredError
	require.False(t, errors.As(err, &ue), "an unregistered type cannot be rebuilt")

	_, err = get("boom")
	require.ErrorIs(t, err, shoal.ErrPanic)
	require.ErrorAs(t, err, &te)
	require.Contains(t, te.Message, "index out of range [4] with length 0")
	require.Contains(t, te.Traceback, "errors_test.go", "the panic's stack points at the task's source")
}

func TestErrorsReachDependents(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)
	g := shoal.NewGraph()
	bad := lookup.Call(g, shoal.Lit("boom"))
	dependent := lookup.Call(g, bad)
	fs, err := shoal.SubmitAll(ctx, c, g, []shoal.Ref[string]{bad, dependent})
	require.NoError(t, err)
	for _, f := range fs {
		defer f.Release()
	}
	err = shoal.Wait(ctx, fs)
	require.ErrorIs(t, err, shoal.ErrPanic)
	var te *shoal.TaskError
	require.ErrorAs(t, err, &te)
	require.Equal(t, bad.Key(), shoal.Key(te.Key), "Wait reports the first failed future in order")
	require.Error(t, fs[1].Wait(ctx), "the dependent fails too")
}

func TestContextCancellation(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	g := shoal.NewGraph()
	long := slow.Call(g, shoal.Lit(3.0))

	// another future to the same key sees what Get does to it on the cluster
	watch, err := shoal.Submit(ctxT(t), c, g, long)
	require.NoError(t, err)
	defer watch.Release()

	ctx, cancel := context.WithCancel(context.Background())
	go cancel() // while Get waits (or before it submits: either way it must return and cancel)
	_, err = shoal.Get(ctx, c, g, long)
	require.ErrorIs(t, err, context.Canceled, "Get returns when its context ends")
	require.ErrorIs(t, watch.Wait(ctxT(t)), shoal.ErrCancelled, "and cancels the key on the cluster")

	// Wait, Gather and AsCompleted honour their contexts too
	g2 := shoal.NewGraph()
	f, err := shoal.Submit(ctxT(t), c, g2, slow.Call(g2, shoal.Lit(3.0)))
	require.NoError(t, err)
	done, stop := context.WithCancel(context.Background())
	stop()
	require.ErrorIs(t, shoal.Wait(done, []shoal.FutureOf[bool]{f}), context.Canceled)
	_, err = shoal.Gather(done, []shoal.FutureOf[bool]{f})
	require.ErrorIs(t, err, context.Canceled)
	for range shoal.AsCompleted(done, []shoal.FutureOf[bool]{f}) {
		t.Fatal("AsCompleted yielded after its context ended")
	}
	require.NoError(t, f.Cancel())
	require.ErrorIs(t, f.Wait(ctxT(t)), shoal.ErrCancelled)
	f.Release()
}
