package worker

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// A spill directory that fills up is reported (once, with its errno), spilling stops there,
// and every value stays readable from memory.
func TestSpillToFullDiskSurfaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a 1 MiB tmpfs as the spill directory")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	s := NewStore(dir, 1) // spill everything
	var failures []error
	s.OnSpillError = func(path string, err error) {
		require.Contains(t, path, dir)
		failures = append(failures, err)
	}
	const n, size = 6, 300 << 10
	for i := range n {
		s.Put(fmt.Sprint("k", i), "bytes", [][]byte{make([]byte, size)}, nil)
	}
	require.ErrorIs(t, s.SpillError(), syscall.ENOSPC)
	require.Len(t, failures, 1, "spilling is suspended after a failed write, not retried at every put")
	require.ErrorIs(t, failures[0], syscall.ENOSPC)
	st := s.Stats()
	require.Positive(t, st.Memory, "what could not be spilled stays in memory")
	require.Positive(t, st.Spilled, "what fitted was spilled")
	for i := range n {
		e, err := s.Get(fmt.Sprint("k", i), true)
		require.NoError(t, err)
		require.Len(t, e.Frames[0], size)
	}
}
