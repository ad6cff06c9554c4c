package sim

import (
	"time"

	"github.com/shoal-dev/shoal/dashboard"
)

const restartPause = 3 * time.Second

// stepLocked advances the simulation to now: finishes due tasks, starts ready ones, refreshes
// the workers' load.
func (s *Sim) stepLocked(now time.Time) {
	s.mu.now = now
	if s.mu.done {
		if s.cfg.Loop && now.Sub(s.lastStopLocked()) > restartPause {
			s.restartLocked()
		}
		return
	}
	for _, w := range s.mu.workers {
		for th, t := range w.threads {
			if t != nil && !t.stop.After(now) {
				w.threads[th] = nil
				s.finishLocked(w, t)
			}
		}
	}
	for _, w := range s.mu.workers {
		for th := range w.threads {
			if w.threads[th] == nil {
				if t := s.nextReadyLocked(); t != nil {
					s.startLocked(w, th, t)
				}
			}
		}
	}
	s.refreshWorkersLocked()
	s.mu.done = s.allDoneLocked()
}

func (s *Sim) lastStopLocked() time.Time {
	var last time.Time
	for _, t := range s.mu.order {
		if t.stop.After(last) {
			last = t.stop
		}
	}
	return last
}

// restartLocked starts a new graph; one worker is cycled out and back in so that the Events
// view has something to show.
func (s *Sim) restartLocked() {
	w := s.mu.workers[s.mu.rng.IntN(len(s.mu.workers))]
	s.cluster(dashboard.Event{Kind: dashboard.EventWorkerLeft, Worker: w.info.Address, Name: w.info.Name, Reason: "goodbye"})
	s.cluster(dashboard.Event{Kind: dashboard.EventWorkerJoined, Worker: w.info.Address, Name: w.info.Name})
	s.newGraphLocked()
}

func (s *Sim) nextReadyLocked() *task {
	for _, t := range s.mu.order {
		if t.state != "waiting" {
			continue
		}
		ready := true
		for _, d := range t.deps {
			if d.state != "memory" {
				ready = false
				break
			}
		}
		if ready {
			return t
		}
	}
	return nil
}

func (s *Sim) startLocked(w *worker, th int, t *task) {
	begin := s.mu.now
	for _, d := range t.deps {
		if d.worker == w {
			continue
		}
		xfer := time.Duration(d.nbytes/(500<<10)) * time.Microsecond // ~500 MB/s
		s.feed.Publish(dashboard.Event{
			Kind: dashboard.EventTransfer, Time: begin.UnixNano(), Key: d.key, Group: d.group.name,
			Worker: w.info.Address, Peer: d.worker.info.Address, NBytes: d.nbytes,
			Start: begin.UnixNano(), Stop: begin.Add(xfer).UnixNano(),
		})
		w.info.BytesRecv += d.nbytes
		d.worker.info.BytesSent += d.nbytes
		s.mu.moved += d.nbytes
		begin = begin.Add(xfer)
	}
	mean := float64(t.group.mean)
	t.worker, t.thread = w, th
	t.start = begin
	t.stop = begin.Add(time.Duration(mean * (0.5 + s.mu.rng.Float64())))
	t.attempts++
	w.threads[th] = t
	s.transitionLocked(t, "waiting", "processing", "placed", w)
}

func (s *Sim) finishLocked(w *worker, t *task) {
	ev := dashboard.Event{
		Kind: dashboard.EventTask, Time: t.stop.UnixNano(), Key: t.key, Group: t.group.name,
		Worker: w.info.Address, Thread: t.thread, Start: t.start.UnixNano(), Stop: t.stop.UnixNano(),
	}
	if t.group.name == "clean" && t.attempts == 1 && s.mu.rng.Float64() < s.cfg.Failures {
		t.err = &dashboard.TaskError{
			Code: "task-error", Type: "ValueError", Message: "simulated failure in " + t.key,
			Traceback: "Traceback (most recent call last):\n  File \"pipeline.py\", line 12, in clean\n    raise ValueError(\"bad row\")\nValueError: bad row\n",
		}
		ev.State = "erred"
		s.feed.Publish(ev)
		s.mu.failed++
		s.cluster(dashboard.Event{Kind: dashboard.EventError, Key: t.key, Group: t.group.name, Worker: w.info.Address, Reason: t.err.Message})
		s.cluster(dashboard.Event{Kind: dashboard.EventRetry, Key: t.key, Group: t.group.name, Worker: w.info.Address, Attempt: t.attempts})
		s.transitionLocked(t, "processing", "waiting", "task-erred (retry)", w)
		t.worker = nil
		return
	}
	ev.State = "memory"
	s.feed.Publish(ev)
	t.nbytes = (1 + s.mu.rng.Int64N(48)) << 20
	s.mu.completed++
	s.transitionLocked(t, "processing", "memory", "task-finished", w)
	for _, d := range t.deps {
		if d.state == "memory" && s.dependentsDoneLocked(d) {
			s.transitionLocked(d, "memory", "released", "dependents done", nil)
		}
	}
}

func (s *Sim) dependentsDoneLocked(d *task) bool {
	for _, t := range s.mu.order {
		for _, x := range t.deps {
			if x == d && t.state != "memory" && t.state != "released" {
				return false
			}
		}
	}
	return true
}

func (s *Sim) allDoneLocked() bool {
	for _, t := range s.mu.order {
		if t.state != "memory" && t.state != "released" {
			return false
		}
	}
	return true
}

func (s *Sim) refreshWorkersLocked() {
	mem := make(map[*worker]int64)
	for _, t := range s.mu.order {
		if t.state == "memory" && t.worker != nil {
			mem[t.worker] += t.nbytes
		}
	}
	for _, w := range s.mu.workers {
		running := 0
		for _, t := range w.threads {
			if t != nil {
				running++
			}
		}
		w.info.Memory = min(mem[w], w.info.MemoryLimit)
		w.info.Spilled = max(mem[w]-w.info.MemoryLimit, 0)
		w.info.Executing = running
		w.info.CPU = 100 * float64(running) / float64(len(w.threads))
		w.info.LastSeen = float64(s.mu.now.UnixNano()) / 1e9
	}
}
