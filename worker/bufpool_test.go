package worker

import (
	"context"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// TestBufPoolRecyclesOnlyGarbage: a buffer comes back to the pool once nothing refers to it,
// never while something does, and the pool keeps within its size.
func TestBufPoolRecyclesOnlyGarbage(t *testing.T) {
	p := newBufPool(64 << 20)
	p.min = 1 << 20
	require.Len(t, p.get(100), 100, "small buffers are plain allocations")

	held := p.get(8 << 20)
	heldAddr := uintptr(unsafe.Pointer(&held[0]))
	dropped := p.get(8 << 20)
	droppedAddr := uintptr(unsafe.Pointer(&dropped[0]))
	dropped = nil
	_ = dropped
	eventually(t, func() bool {
		runtime.GC()
		return p.held() > 0
	})
	again := p.get(8<<20 - 100)
	require.Equal(t, droppedAddr, uintptr(unsafe.Pointer(&again[0])), "the garbage buffer is reused")
	require.Len(t, again, 8<<20-100)
	require.Zero(t, p.held())
	runtime.GC()
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	require.Zero(t, p.held(), "a buffer in use is not recycled")
	held[0] = 1
	require.NotEqual(t, heldAddr, uintptr(unsafe.Pointer(&again[0])))
	runtime.KeepAlive(held)
	runtime.KeepAlive(again)

	// beyond max, buffers are left to the collector
	small := newBufPool(10 << 20)
	small.min = 1 << 20
	a, b := small.get(6<<20), small.get(6<<20)
	_, _ = a, b
	a, b = nil, nil
	eventually(t, func() bool {
		runtime.GC()
		return small.held() > 0
	})
	runtime.GC()
	require.LessOrEqual(t, small.held(), int64(10<<20))

	// idle buffers are dropped
	small.mu.Lock()
	for i := range small.mu.free {
		small.mu.free[i].when = time.Now().Add(-2 * bufPoolIdle)
	}
	small.mu.Unlock()
	small.trim()
	require.Zero(t, small.held())
}

// TestPeerFetchIdleTimeout: a peer that accepts a get_data and then says nothing fails the
// fetch with a clear error instead of stalling it.
func TestPeerFetchIdleTimeout(t *testing.T) {
	old := peerIdleTimeout
	peerIdleTimeout = 200 * time.Millisecond
	t.Cleanup(func() { peerIdleTimeout = old })
	silent, _ := silentPeer(t)
	w := newTestWorker(t, testConfig(t))
	start := time.Now()
	_, err := w.peers.getData(context.Background(), silent, []string{"k"})
	require.ErrorContains(t, err, "sent nothing for 200ms while answering get_data")
	require.Less(t, time.Since(start), 3*time.Second)
}
