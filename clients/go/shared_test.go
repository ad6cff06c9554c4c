package shoal_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	shoal "github.com/shoal-dev/shoal/clients/go"
)

func TestSharedVariableAndQueue(t *testing.T) {
	logsOnFailure(t)
	c := sharedClient(t)
	ctx := ctxT(t)

	v := c.Variable("go-variable")
	require.NoError(t, v.Set(ctx, map[string]any{"n": 3, "s": "x"}))
	got, err := v.Get(ctx)
	require.NoError(t, err)
	m, ok := got.(map[string]any)
	require.True(t, ok, "%T", got)
	require.EqualValues(t, 3, m["n"])
	require.Equal(t, "x", m["s"])
	require.NoError(t, v.Delete(ctx))
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = v.Get(short)
	require.True(t, errors.Is(err, shoal.ErrNotReady) || errors.Is(err, context.DeadlineExceeded), "%v", err)

	// a future in a variable comes back as a future of this client
	g := shoal.NewGraph()
	sq := square.Call(g, shoal.Lit[int64](12))
	futs, err := shoal.SubmitAll(ctx, c, g, []shoal.Ref[int64]{sq})
	require.NoError(t, err)
	require.NoError(t, v.Set(ctx, futs[0].Future))
	back, err := v.Get(ctx)
	require.NoError(t, err)
	f, ok := back.(*shoal.Future)
	require.True(t, ok, "%T", back)
	val, err := f.Result(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 144, val)

	q := c.Queue("go-queue", 0)
	for i := range 3 {
		require.NoError(t, q.Put(ctx, i))
	}
	n, err := q.Len(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	for i := range 3 {
		x, err := q.Get(ctx)
		require.NoError(t, err)
		require.EqualValues(t, i, x)
	}
	// a get waits for a put
	done := make(chan any, 1)
	go func() { x, _ := q.Get(ctx); done <- x }()
	require.NoError(t, q.Put(ctx, "late"))
	require.Equal(t, "late", <-done)
}
