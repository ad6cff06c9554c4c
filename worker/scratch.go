package worker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// A worker's scratch directory (spill files) is <local-dir>/shoal-worker-XXXX, removed when the
// worker closes. A worker that is killed cannot remove it, so each worker holds an flock(2) on
// its directory for as long as it lives, and a starting worker removes the directories of
// workers that no longer hold theirs (as dask's workers purge stale work spaces). A lock, not a
// pid, decides: pids are reused and are not comparable across pid namespaces sharing a /tmp,
// while the kernel drops a dead process's locks. Only directories with the marker a worker
// writes once it holds the lock are judged: one made by an older worker, or by a worker that has
// not taken its lock yet, is left alone.
const scratchPrefix = "shoal-worker-"

// scratchMarker is an empty file a worker writes into its directory once it holds the lock.
const scratchMarker = ".locked"

// scratchDir is a worker's locked scratch directory.
type scratchDir struct {
	path string
	lock *os.File // the open directory, flocked; closing it releases the lock
}

// newScratchDir removes stale scratch directories in parent, then makes and locks a new one.
func newScratchDir(parent string) (*scratchDir, []string, error) {
	purged := purgeScratch(parent)
	dir, err := os.MkdirTemp(parent, scratchPrefix)
	if err != nil {
		return nil, purged, err
	}
	f, err := os.Open(dir)
	if err == nil {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, scratchMarker), nil, 0o600)
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, purged, fmt.Errorf("locking %s: %w", dir, err)
	}
	return &scratchDir{path: dir, lock: f}, purged, nil
}

// remove deletes the directory, then releases its lock.
func (d *scratchDir) remove() error {
	err := os.RemoveAll(d.path)
	d.lock.Close()
	return err
}

// purgeScratch removes the scratch directories in parent whose lock nobody holds, and returns
// their paths.
func purgeScratch(parent string) []string {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return nil
	}
	var purged []string
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), scratchPrefix) {
			continue
		}
		path := filepath.Join(parent, e.Name())
		if stale, _ := scratchStale(path); stale {
			if os.RemoveAll(path) == nil {
				purged = append(purged, path)
			}
		}
	}
	return purged
}

// scratchStale tells whether path is a scratch directory of a worker that is gone: it was
// locked once (it holds the lock marker) and nobody holds the lock now.
func scratchStale(path string) (bool, error) {
	if _, err := os.Stat(filepath.Join(path, scratchMarker)); err != nil {
		return false, err // no marker: not ours to judge
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil // its worker is alive
	}
	if err != nil {
		return false, err
	}
	return true, nil // we hold its lock now; closing f releases it after the removal
}
