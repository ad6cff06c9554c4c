// Package logring keeps a process's most recent log lines in memory, so that a client can ask
// a worker or the scheduler for them (dask's get_worker_logs / get_scheduler_logs) without
// access to its stderr.
package logring

import (
	"bytes"
	"sync"
)

// Ring is an io.Writer that keeps the last lines written to it, at most Lines of them and at
// most Bytes bytes in all. A line longer than Bytes/4 is cut. It is safe for concurrent use.
type Ring struct {
	mu      sync.Mutex
	lines   []string // a circular buffer of len(lines) == max lines
	next    int
	n       int
	bytes   int
	max     int
	partial []byte // the start of a line not yet ended by '\n'
}

// DefaultLines and DefaultBytes are the bounds New uses when given 0.
const (
	DefaultLines = 10000
	DefaultBytes = 4 << 20
)

// New returns a Ring keeping at most lines lines and maxBytes bytes (0: the defaults).
func New(lines, maxBytes int) *Ring {
	if lines <= 0 {
		lines = DefaultLines
	}
	if maxBytes <= 0 {
		maxBytes = DefaultBytes
	}
	return &Ring{lines: make([]string, lines), max: maxBytes}
}

// Write stores each complete line of p; it never fails.
func (r *Ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(r.partial) < r.max/4 {
				r.partial = append(r.partial, p[:min(len(p), r.max/4-len(r.partial))]...)
			}
			break
		}
		line := p[:i]
		if len(r.partial) > 0 {
			line = append(r.partial, line...)
			r.partial = nil
		}
		r.add(string(line[:min(len(line), r.max/4)]))
		p = p[i+1:]
	}
	return n, nil
}

func (r *Ring) add(line string) {
	if r.n == len(r.lines) {
		r.drop()
	}
	for r.n > 0 && r.bytes+len(line) > r.max {
		r.drop()
	}
	r.lines[r.next] = line
	r.next = (r.next + 1) % len(r.lines)
	r.n++
	r.bytes += len(line)
}

// drop forgets the oldest line.
func (r *Ring) drop() {
	i := (r.next - r.n + len(r.lines)) % len(r.lines)
	r.bytes -= len(r.lines[i])
	r.lines[i] = ""
	r.n--
}

// Last returns the last n lines, oldest first (n <= 0: all kept).
func (r *Ring) Last(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n <= 0 || n > r.n {
		n = r.n
	}
	out := make([]string, n)
	for k := 0; k < n; k++ {
		out[k] = r.lines[(r.next-n+k+len(r.lines))%len(r.lines)]
	}
	return out
}
