package worker

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestStoreSpillBytes(t *testing.T) {
	s := NewStore(t.TempDir(), 0) // no spilling of its own
	defer s.Close()
	for i := range 4 {
		s.Put(string(rune('a'+i)), "bytes", [][]byte{payload(i, 1000)}, nil)
	}
	_, err := s.Get("a", false) // touch a: b is now the least recently used
	require.NoError(t, err)
	require.Equal(t, int64(0), s.SpillBytes(0))
	moved := s.SpillBytes(1500) // two values must go
	require.Equal(t, int64(2000), moved)
	st := s.Stats()
	require.Equal(t, int64(2000), st.Memory)
	require.Equal(t, int64(2000), st.Spilled)
	require.Equal(t, 2, st.SpilledKeys)
	e, err := s.Get("b", false) // b was spilled, and reads back intact
	require.NoError(t, err)
	require.Equal(t, payload(1, 1000), e.Frames[0])
	require.Equal(t, int64(2000), s.SpillBytes(1<<40)) // everything left
	require.Equal(t, int64(0), s.Stats().Memory)
}

func TestRSSOf(t *testing.T) {
	if _, err := os.Stat("/proc/self/statm"); err != nil {
		t.Skip("no /proc")
	}
	r := rssOf(os.Getpid())
	require.Greater(t, r, int64(1<<20))
	require.Equal(t, int64(-1), rssOf(-5))

	// shared memory this process maps counts in rssOf, not in unsharedOf (the two are read
	// back to back: what else the process allocates meanwhile is noise, not 64 MiB)
	require.Greater(t, unsharedOf(os.Getpid()), int64(1<<20))
	shared := func() int64 { return rssOf(os.Getpid()) - unsharedOf(os.Getpid()) }
	before := shared()
	fd, err := newMemfd("rss-test", 0, 64<<20)
	require.NoError(t, err)
	defer unix.Close(fd)
	mem, err := unix.Mmap(fd, 0, 64<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	require.InDelta(t, before+64<<20, shared(), 8<<20)
	require.Equal(t, int64(-1), unsharedOf(-5))
}

// The monitor spills results when the whole worker's memory is over the spill threshold,
// even though the results alone are well under the store's own threshold.
func TestMemoryMonitorSpillsOnProcessMemory(t *testing.T) {
	if rssOf(os.Getpid()) < 0 {
		t.Skip("no /proc")
	}
	cfg := testConfig(t)
	cfg.MemoryMonitorInterval = time.Hour // the test drives checkMemory itself
	cfg.MemoryLimit = 16 << 20            // this test process alone is over 0.7 of it
	w := newTestWorker(t, cfg)
	for i := range 3 {
		w.store.Put(string(rune('a'+i)), "bytes", [][]byte{payload(i, 1<<20)}, nil)
	}
	require.Equal(t, int64(3<<20), w.store.Stats().Memory) // under SpillFraction×16 MiB
	w.checkMemory(time.Now())
	st := w.store.Stats()
	require.Equal(t, int64(0), st.Memory)
	require.Equal(t, int64(3<<20), st.Spilled)
	require.Greater(t, w.ProcessMemory(), int64(0))
	// nothing is left to spill, so a high baseline does not pause the worker forever
	require.False(t, w.mem.paused.Load())
	w.mu.Lock()
	require.False(t, w.pausedLocked())
	w.mu.Unlock()
	require.Greater(t, w.Metrics().ProcessMemory, int64(0))
}

// Above the pause threshold with results in memory, the worker pauses; it resumes once
// they are gone.
func TestMemoryMonitorPause(t *testing.T) {
	if rssOf(os.Getpid()) < 0 {
		t.Skip("no /proc")
	}
	cfg := testConfig(t)
	cfg.MemoryMonitorInterval = time.Hour
	cfg.MemoryLimit = 1 << 40 // spilling never triggers
	cfg.ProcessSpillFraction = 1
	cfg.PauseFraction = 1e-9 // a few hundred bytes: the process is always above
	w := newTestWorker(t, cfg)
	w.store.Put("x", "bytes", [][]byte{payload(1, 1000)}, nil)
	w.checkMemory(time.Now())
	require.True(t, w.mem.paused.Load())
	require.True(t, w.Metrics().Paused)
	require.Equal(t, int64(1000), w.store.Stats().Memory, "nothing spilled")
	w.store.Delete("x")
	w.checkMemory(time.Now())
	require.False(t, w.mem.paused.Load())
}

func TestConfigValidateMemoryFractions(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ProcessSpillFraction = 1.5
	require.ErrorContains(t, cfg.Validate(), "ProcessSpillFraction")
	cfg = DefaultConfig()
	cfg.MemoryMonitorInterval = -time.Second
	require.ErrorContains(t, cfg.Validate(), "MemoryMonitorInterval")
}

// The idle trim runs once after work stops, not while tasks keep finishing.
func TestIdleTrimOncePerBurst(t *testing.T) {
	cfg := testConfig(t)
	cfg.MemoryMonitorInterval = time.Hour
	w := newTestWorker(t, cfg)
	w.stats.executed.Add(5) // a burst of work
	require.False(t, w.idleSinceLastCheck(), "tasks finished since the last check")
	require.True(t, w.idleSinceLastCheck(), "idle now")
	w.mem.trimmed = true // what checkMemory records after trimming
	require.False(t, w.idleSinceLastCheck(), "already trimmed")
	w.stats.executed.Add(1)
	require.False(t, w.idleSinceLastCheck())
	w.mu.Lock()
	w.mu.running = 1 // a task is running
	w.mu.Unlock()
	require.False(t, w.idleSinceLastCheck())
	w.mu.Lock()
	w.mu.running = 0
	w.mu.Unlock()
	require.True(t, w.idleSinceLastCheck())
}
