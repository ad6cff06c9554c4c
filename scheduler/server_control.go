package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Cluster control requests from clients (docs/protocol.md §3.1, "Cluster control"): restart,
// retire_workers, replicate, rebalance, scale, processing and get_logs. Each is answered with
// ok (or error) carrying the request's id.

// Scaler starts and stops worker processes for a scheduler that manages them (`shoal local`).
// Scale is called on its own goroutine and returns once the cluster has n workers (or fails).
type Scaler interface {
	Scale(n int) error
}

// SetScaler lets clients' scale requests start and stop workers (call before Serve).
func (s *Server) SetScaler(sc Scaler) { s.scaler = sc }

// retireTimeout bounds how long retire_workers waits for a worker's values to be copied away.
const retireTimeout = 2 * time.Minute

// retiring is a retire_workers request in progress.
type retiring struct {
	reply    func(*wire.Msg)
	workers  []WorkerID
	addrs    []string
	deadline time.Time
	asked    time.Time // when copies were last asked for
}

func (s *Server) onControl(cl *clientConn, m *wire.Msg) {
	id := m.ID // m is recycled once this returns; a later reply (scale) must not read it
	reply := func(r *wire.Msg) {
		r.ID = id
		if c, ok := s.clients[cl.id]; ok && c == cl {
			s.queue(cl.conn, r)
		}
	}
	switch m.Op {
	case wire.OpRestart:
		if len(m.Addrs) > 0 { // restart_workers: those workers only; their tasks run elsewhere
			ids, err := s.workerIDs(m.Addrs)
			if err != nil {
				reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: "restart_workers: " + err.Error()})
				return
			}
			for _, id := range ids {
				w := s.workers.get(id)
				w.closing = true
				s.removeWorkerWith(w, "restarted by a client", true, &wire.Msg{Op: wire.OpRestart, Reason: "restart_workers"})
			}
			reply(&wire.Msg{Op: wire.OpOK, N: int64(len(ids))})
			return
		}
		s.journalMsg(&wire.Msg{Op: jopRestart})
		n := s.restart(orDefault(m.Reason, fmt.Sprintf("the cluster was restarted by client %d", cl.id)))
		reply(&wire.Msg{Op: wire.OpOK, N: int64(n)})
	case wire.OpTaskStream:
		s.onTaskStream(m, reply)
	case wire.OpProfile:
		s.onProfile(m, reply)
	case wire.OpStory:
		out := make(map[string][]string, len(m.Keys))
		for _, k := range m.Keys {
			ti, ok := s.core.TaskInfo(k)
			if !ok {
				continue
			}
			lines := make([]string, len(ti.Story))
			for i, st := range ti.Story {
				lines[i] = fmt.Sprintf("%d %s %s %s", st.Seq, st.Event, st.From, st.To)
			}
			out[k] = lines
		}
		reply(&wire.Msg{Op: wire.OpOK, WhoHas: out})
	case wire.OpRetireWorkers:
		ids, err := s.workerIDs(m.Addrs)
		if err != nil {
			reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: "retire_workers: " + err.Error()})
			return
		}
		s.retire(ids, reply)
	case wire.OpReplicate:
		if m.N < 1 {
			reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: fmt.Sprintf("replicate: n=%d must be at least 1", m.N)})
			return
		}
		s.handle(EvReplicate{Keys: m.Keys, N: int(m.N)})
		reply(&wire.Msg{Op: wire.OpOK})
	case wire.OpRebalance:
		s.handle(EvRebalance{Keys: m.Keys})
		reply(&wire.Msg{Op: wire.OpOK})
	case wire.OpScale:
		if s.scaler == nil {
			reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: "scale: this scheduler does not start " +
				"its workers (only `shoal local` and LocalCluster do); start or stop `shoal worker` processes instead"})
			return
		}
		if m.N < 0 {
			reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: fmt.Sprintf("scale: n=%d must not be negative", m.N)})
			return
		}
		sc, n := s.scaler, int(m.N)
		s.goFunc(func() {
			r := &wire.Msg{Op: wire.OpOK, N: int64(n)}
			if err := sc.Scale(n); err != nil {
				r = &wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: "scale: " + err.Error()}
			}
			s.Query(func(*Core) { reply(r) })
		})
	case wire.OpProcessing:
		out := make(map[string][]string, s.workers.len())
		for w := range s.workers.all() {
			if len(m.Addrs) == 0 || slices.Contains(m.Addrs, w.info.Address) {
				out[w.info.Address] = s.core.Processing(w.id)
			}
		}
		reply(&wire.Msg{Op: wire.OpOK, WhoHas: out})
	case wire.OpPreload:
		if _, ok := s.preloads.items[m.Name]; ok && m.N == 1 && m.Reason != "remove" {
			reply(&wire.Msg{Op: wire.OpOK, N: -1}) // idempotent: one of that name is kept
			return
		}
		if err := s.preloads.set(m.Name, m.Reason, m.Payload); err != nil {
			reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: "preload: " + err.Error()})
			return
		}
		for w := range s.workers.all() {
			s.queue(w.conn, &wire.Msg{Op: wire.OpPreload, Name: m.Name, Reason: m.Reason, Payload: m.Payload})
		}
		s.log.Info("preload for every worker's executors", "name", m.Name, "kind", m.Reason, "bytes", len(m.Payload))
		reply(&wire.Msg{Op: wire.OpOK, N: int64(s.workers.len())})
	case wire.OpGetLogs:
		var lines []string
		if s.cfg.Logs != nil {
			lines = s.cfg.Logs(int(m.N))
		}
		reply(&wire.Msg{Op: wire.OpOK, Keys: lines})
	}
}

func (s *Server) workerIDs(addrs []string) ([]WorkerID, error) {
	var ids []WorkerID
	var unknown []string
	for _, a := range addrs {
		id, ok := s.byAddr[a]
		if !ok {
			id, ok = s.byName[a]
		}
		switch {
		case !ok:
			unknown = append(unknown, a)
		case !slices.Contains(ids, id): // a worker named twice (by address and by name) once
			ids = append(ids, id)
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("no worker at %s", strings.Join(unknown, ", "))
	}
	return ids, nil
}

// maxPreloadBytes bounds what the scheduler keeps of uploaded files and worker plugins.
const maxPreloadBytes = 256 << 20

// preloadStore keeps the files and worker plugins clients registered, in order, for the
// workers there are and every worker that joins later.
type preloadStore struct {
	names []string
	items map[string]*wire.Msg
	bytes int
}

func (p *preloadStore) set(name, kind string, data []byte) error {
	switch {
	case name == "" || len(name) > 255:
		return fmt.Errorf("name %q: want 1 to 255 bytes", name)
	case kind == "file" && (strings.ContainsAny(name, "/\\\x00") || name == "." || name == ".."):
		return fmt.Errorf("file name %q: want a plain file name", name)
	case kind != "file" && kind != "plugin" && kind != "remove":
		return fmt.Errorf("%q: kind %q is not file, plugin or remove", name, kind)
	}
	if p.items == nil {
		p.items = map[string]*wire.Msg{}
	}
	oldBytes := 0
	if old, ok := p.items[name]; ok {
		oldBytes = len(old.Payload)
	}
	if kind != "remove" && p.bytes-oldBytes+len(data) > maxPreloadBytes {
		return fmt.Errorf("%q: the uploaded files and plugins would take more than %d MiB", name, maxPreloadBytes>>20)
	}
	if old, ok := p.items[name]; ok {
		p.bytes -= len(old.Payload)
		delete(p.items, name)
		p.names = slices.DeleteFunc(p.names, func(n string) bool { return n == name })
	}
	if kind == "remove" {
		return nil
	}
	p.items[name] = &wire.Msg{Op: wire.OpPreload, Name: name, Reason: kind, Payload: data}
	p.names = append(p.names, name)
	p.bytes += len(data)
	return nil
}

// restart cancels every task and restarts every worker: each is told to restart (its process
// starts again from scratch, executors included) and is removed at once; the new processes
// register as new workers. It returns how many workers were told.
func (s *Server) restart(reason string) int {
	s.log.Info("restarting the cluster", "reason", reason, "workers", s.workers.len())
	s.handle(EvRestart{Reason: reason})
	s.sharedRestarted()
	for _, r := range s.retirements {
		r.reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeCancelled, Message: "retire_workers: " + reason})
	}
	s.retirements = nil
	n := 0
	for w := range s.workers.all() {
		w.closing = true
		s.removeWorkerWith(w, "restarting: "+reason, true, &wire.Msg{Op: wire.OpRestart, Reason: reason})
		n++
	}
	return n
}

// retire starts retiring workers: no new tasks go there, their unique values are copied to
// the others, and each is closed (it drains and says goodbye) once it holds nothing unique.
func (s *Server) retire(ids []WorkerID, reply func(*wire.Msg)) {
	r := &retiring{reply: reply, workers: ids, deadline: s.cfg.Clock().Add(retireTimeout), asked: s.cfg.Clock()}
	for _, id := range ids {
		r.addrs = append(r.addrs, s.workers.get(id).info.Address)
	}
	s.log.Info("retiring workers", "workers", r.addrs)
	s.handle(EvRetire{Workers: ids})
	s.retirements = append(s.retirements, r)
	s.checkRetiring(s.cfg.Clock())
}

// checkRetiring closes retiring workers that hold nothing unique any more and answers the
// requests whose workers are all gone. Copies that did not arrive are asked for again every
// second; a request still waiting at its deadline fails, naming what could not be moved.
func (s *Server) checkRetiring(now time.Time) {
	leaving := map[WorkerID]bool{}
	for _, r := range s.retirements {
		for _, id := range r.workers {
			if s.workers.get(id) != nil {
				leaving[id] = true
			}
		}
	}
	nowhere := len(leaving) >= s.workers.len() // no worker stays to copy to: close them as they are
	keep := s.retirements[:0]
	for _, r := range s.retirements {
		left := 0
		for _, id := range r.workers {
			w := s.workers.get(id)
			if w == nil {
				continue
			}
			left++
			if !w.retired && (nowhere || s.core.Retired(id)) {
				w.retired = true
				s.queue(w.conn, &wire.Msg{Op: wire.OpClose, Reason: "retired by a client"})
			}
		}
		switch {
		case left == 0:
			r.reply(&wire.Msg{Op: wire.OpOK, Addrs: r.addrs})
		case now.After(r.deadline):
			r.reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: fmt.Sprintf(
				"retire_workers: %d of %d workers still hold values no other worker could copy after %v",
				left, len(r.workers), retireTimeout)})
		default:
			if now.Sub(r.asked) >= time.Second {
				r.asked = now
				s.handle(EvRetire{Workers: r.workers})
			}
			keep = append(keep, r)
		}
	}
	clear(s.retirements[len(keep):])
	s.retirements = keep
}

// Retire retires the workers with these names or data addresses (as retire_workers does) and
// returns once they are gone, or fails (safe from any goroutine).
func (s *Server) Retire(ctx context.Context, workers []string) error {
	done := make(chan *wire.Msg, 1)
	err := s.QueryContext(ctx, func(*Core) {
		ids, err := s.workerIDs(workers)
		if err != nil {
			done <- &wire.Msg{Op: wire.OpError, Message: err.Error()}
			return
		}
		s.retire(ids, func(m *wire.Msg) { done <- m })
	})
	if err != nil {
		return err
	}
	select {
	case m := <-done:
		if m.Op == wire.OpError {
			return errors.New(m.Message)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
