package scheduler

import (
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// The driver's side of shared state: requests from clients go to shared, its effects become
// messages and want/release events for the core, and a timer wakes the driver at the next
// deadline of a parked request or lease (the tick is a fallback).

// sharedDriver is the driver's shared state; its zero value is ready (created on first use).
type sharedDriver struct {
	st      *shared
	timer   *time.Timer
	timerAt int64 // unix ns the timer fires at; 0: not armed
}

func (s *Server) sharedState() *shared {
	if s.shared.st == nil {
		s.shared.st = newShared(DefaultSharedLimits(), func(k string) bool { return s.core.State(k) != Forgotten })
	}
	return s.shared.st
}

// onShared serves a shared-state request from a client.
func (s *Server) onShared(cl *clientConn, m *wire.Msg) {
	s.sharedState().handle(cl.id, m, s.cfg.Clock().UnixNano())
	s.applyShared()
}

// sharedClientLeft drops a departed client's parked requests and frees its leases.
func (s *Server) sharedClientLeft(cl ClientID) {
	if s.shared.st != nil {
		s.shared.st.clientLeft(cl, s.cfg.Clock().UnixNano())
		s.applyShared()
	}
}

// sharedTick answers parked requests past their deadline and frees expired leases.
func (s *Server) sharedTick(now time.Time) {
	if s.shared.st != nil {
		s.shared.st.tick(now.UnixNano())
		s.applyShared()
	}
}

// sharedRestarted forgets shared state's holds after a restart dropped every want.
func (s *Server) sharedRestarted() {
	if s.shared.st != nil {
		s.shared.st.restarted()
	}
}

// applyShared performs shared's effects in order, then arms the timer for its next deadline.
func (s *Server) applyShared() {
	sh := s.shared.st
	for _, e := range sh.take() {
		switch {
		case e.reply != nil:
			if c, ok := s.clients[e.client]; ok {
				s.queue(c.conn, e.reply)
			}
		case len(e.want) > 0:
			s.handle(EvWanted{Client: e.client, Keys: e.want})
		case len(e.release) > 0:
			s.handle(EvReleaseKeys{Client: e.client, Keys: e.release})
		}
	}
	due := sh.due
	if due == 0 || (s.shared.timerAt != 0 && s.shared.timerAt <= due) {
		return
	}
	if s.shared.timer != nil {
		s.shared.timer.Stop()
	}
	s.shared.timerAt = due
	s.shared.timer = time.AfterFunc(time.Until(time.Unix(0, due)), func() {
		s.Query(func(*Core) {
			if s.shared.timerAt == due {
				s.shared.timerAt = 0
			}
			s.sharedTick(s.cfg.Clock())
		})
	})
}

// SharedStats counts the shared state the scheduler holds (safe from any goroutine).
func (s *Server) SharedStats() SharedStats {
	var st SharedStats
	s.Query(func(*Core) {
		if s.shared.st != nil {
			st = s.shared.st.stats()
		}
	})
	return st
}
