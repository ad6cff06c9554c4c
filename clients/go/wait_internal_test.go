package shoal

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Wait returns only once every Progress call has returned. A future becomes final (its done
// channel closed, under the client's lock) before its callbacks run, outside the lock: a Wait
// that looked only at the futures could return with the last calls still to come.
func TestWaitAfterEveryProgressCall(t *testing.T) {
	c := &Client{}
	futs := make([]*Future, 3)
	for i := range futs {
		futs[i] = &Future{c: c, key: fmt.Sprint(i), ks: &keyState{done: make(chan struct{})}}
	}
	var calls atomic.Int64
	waited := make(chan error, 1)
	go func() {
		waited <- Wait(context.Background(), futs, Progress(func(done, total int) { calls.Add(1) }))
	}()
	require.Eventually(t, func() bool { // Wait registered its calls
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, f := range futs {
			if len(f.ks.waiters) == 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, time.Millisecond)
	// as the client's reader does: final under the lock, the callbacks after it (here late)
	var fns []func()
	c.mu.Lock()
	for _, f := range futs {
		fns = append(fns, f.ks.closeLocked(keyResult{state: "memory"})...)
	}
	c.mu.Unlock()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned (err %v) after %d of %d progress calls", err, calls.Load(), len(futs))
	case <-time.After(50 * time.Millisecond):
	}
	runAll(fns)
	select {
	case err := <-waited:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the progress calls")
	}
	require.EqualValues(t, len(futs), calls.Load())
}
