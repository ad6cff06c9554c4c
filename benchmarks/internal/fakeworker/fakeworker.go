// Package fakeworker is a zero-cost Shoal worker for scheduler benchmarks: it speaks the worker
// side of the control protocol (docs/protocol.md §3.3) over a real socket, registers, and
// answers every compute with task_finished at once, without running anything (as RSDS and
// HyperQueue measure their schedulers).
package fakeworker

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Worker is one registered fake worker.
type Worker struct {
	conn       *wire.Conn
	Computes   atomic.Int64 // compute messages received
	Heartbeats atomic.Int64 // heartbeats sent
	Steals     atomic.Int64 // steal requests received (all refused)
	interval   atomic.Int64 // ns between heartbeats the scheduler asked for (0: a second)
}

// Start dials the scheduler's control address and registers as worker number i, offering the
// "noop" Go function with nthreads slots.
func Start(ctx context.Context, addr string, i, nthreads int) (*Worker, error) {
	conn, err := wire.Dial(ctx, addr, wire.DialOptions{Role: wire.RoleWorker})
	if err != nil {
		return nil, err
	}
	err = conn.Send(&wire.Msg{Op: wire.OpRegister, Name: fmt.Sprintf("fake-%d", i),
		DataAddr: fmt.Sprintf("127.0.0.1:%d", 40000+i), NThreads: nthreads, MemLimit: 4 << 30,
		Functions: []string{"noop"}, Version: "bench", PID: os.Getpid()})
	if err != nil {
		conn.Abort()
		return nil, err
	}
	m, _, err := conn.Recv()
	if err != nil || m.Op != wire.OpRegistered {
		conn.Abort()
		if err == nil {
			err = fmt.Errorf("got %q (%s) instead of registered", m.Op, m.Message)
		}
		return nil, err
	}
	w := &Worker{conn: conn}
	w.interval.Store(int64(m.Interval * float64(time.Second))) // as a real worker: asked at registration
	return w, nil
}

// Serve answers until the connection closes.
func (w *Worker) Serve() {
	for {
		m, _, err := w.conn.Recv()
		if err != nil {
			return
		}
		switch m.Op {
		case wire.OpHeartbeat: // as a real worker does, heartbeat as often as the scheduler asks
			w.interval.Store(int64(m.Interval * float64(time.Second)))
		case wire.OpCompute:
			w.Computes.Add(1)
			now := time.Now().UnixNano()
			w.conn.Send(&wire.Msg{Op: wire.OpTaskFinished, Key: m.Task.Key, TaskID: m.TaskID, NBytes: 1,
				Encoding: wire.EncMsgpack, Start: now, Stop: now})
		case wire.OpStealRequest:
			// every task "finished" the moment it arrived: nothing is left to steal
			w.Steals.Add(1)
			w.conn.Send(&wire.Msg{Op: wire.OpStealResponse, Key: m.Key, Accepted: false})
		case wire.OpClose:
			return
		}
		wire.ReleaseMsg(m) // as the worker does: in-process benchmarks share the pool with the scheduler
	}
}

// Heartbeat sends a heartbeat every second, or as often as the scheduler asked, until stop
// is closed.
func (w *Worker) Heartbeat(stop <-chan struct{}) {
	every := max(time.Duration(w.interval.Load()), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if asked := max(time.Duration(w.interval.Load()), time.Second); asked != every {
				every = asked
				t.Reset(every)
			}
			if w.conn.Send(&wire.Msg{Op: wire.OpHeartbeat, MemLimit: 4 << 30, Memory: 1 << 20}) != nil {
				return
			}
			w.Heartbeats.Add(1)
		}
	}
}

// Close drops the connection.
func (w *Worker) Close() { w.conn.Abort() }

// Pool is n fake workers serving in the background.
type Pool struct {
	Workers []*Worker
	stop    chan struct{}
	done    chan struct{}
	running atomic.Int64
	closed  sync.Once
}

// StartPool starts n fake workers against addr.
func StartPool(ctx context.Context, addr string, n, nthreads int) (*Pool, error) {
	p := &Pool{stop: make(chan struct{}), done: make(chan struct{})}
	for i := 0; i < n; i++ {
		w, err := Start(ctx, addr, i, nthreads)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("fake worker %d: %w", i, err)
		}
		p.Workers = append(p.Workers, w)
		p.running.Add(2)
		go func() { w.Serve(); p.exited() }()
		go func() { w.Heartbeat(p.stop); p.exited() }()
	}
	if n == 0 {
		close(p.done)
	}
	return p, nil
}

func (p *Pool) exited() {
	if p.running.Add(-1) == 0 {
		close(p.done)
	}
}

// total sums one counter over the workers.
func (p *Pool) total(counter func(*Worker) *atomic.Int64) int64 {
	var n int64
	for _, w := range p.Workers {
		n += counter(w).Load()
	}
	return n
}

// Heartbeats is the total number of heartbeats sent.
func (p *Pool) Heartbeats() int64 {
	return p.total(func(w *Worker) *atomic.Int64 { return &w.Heartbeats })
}

// Computes is the total number of compute messages received.
func (p *Pool) Computes() int64 {
	return p.total(func(w *Worker) *atomic.Int64 { return &w.Computes })
}

// Steals is the total number of steal requests received.
func (p *Pool) Steals() int64 {
	return p.total(func(w *Worker) *atomic.Int64 { return &w.Steals })
}

// Close stops every worker and waits for their goroutines.
func (p *Pool) Close() {
	p.closed.Do(func() {
		close(p.stop)
		for _, w := range p.Workers {
			w.Close()
		}
		if len(p.Workers) > 0 {
			<-p.done
		}
	})
}
