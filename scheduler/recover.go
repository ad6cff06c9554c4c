package scheduler

import (
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Coming back after a restart: the journal is replayed into the core (replay), then workers
// register again with what they hold; placement waits until all the workers the journal knew
// are back, or RecoveryWait has passed (recovery), and clients that wanted keys have
// ClientGrace to resume before their keys are released (orphans).

// replay feeds journal records to a new server, before it serves anyone.
type replay struct {
	s       *Server
	workers map[string]bool // registered at the end of the journal
	clients map[ClientID]bool
	maxC    ClientID
	records int
	// snapshotKeys are the keys replayClient wants until the snapshot ends
	snapshotKeys []string
}

func newReplay(s *Server) *replay {
	return &replay{s: s, workers: map[string]bool{}, clients: map[ClientID]bool{}}
}

func (r *replay) apply(m *wire.Msg) error {
	s := r.s
	r.records++
	cl := ClientID(m.Client)
	if cl > r.maxC && cl < replayClient {
		r.maxC = cl
	}
	switch m.Op {
	case wire.OpUpdateGraph:
		for h, b := range m.Funcs {
			s.funcs[h] = b
		}
		r.clients[cl] = true
		if cl == replayClient {
			r.snapshotKeys = m.Wanted
		} else if m.ID > s.graphSeq[cl] {
			s.graphSeq[cl] = m.ID
		}
		s.handle(EvUpdateGraph{Client: cl, Tasks: m.Tasks, Wanted: m.Wanted})
	case wire.OpWanted:
		r.clients[cl] = true
		s.handle(EvWanted{Client: cl, Keys: m.Keys})
	case wire.OpFireAndForget:
		s.handle(EvWanted{Client: fireClient, Keys: m.Keys})
	case wire.OpReleaseKeys:
		s.handle(EvReleaseKeys{Client: cl, Keys: m.Keys})
	case wire.OpCancelKeys:
		s.handle(EvCancelKeys{Client: cl, Keys: m.Keys})
	case jopGraphSeq: // a client alive at the snapshot: it gets its grace like the others
		r.clients[cl] = true
		s.graphSeq[cl] = max(s.graphSeq[cl], m.ID)
	case jopClientLeft:
		delete(r.clients, cl)
		delete(s.graphSeq, cl)
		s.handle(EvClientLeft{Client: cl})
		if s.shared.st != nil {
			s.shared.st.clientLeft(cl, m.Start)
			s.applyShared()
		}
	case jopRestart:
		s.handle(EvRestart{Reason: "replayed restart"})
		s.sharedRestarted()
	case jopWorkerJoined:
		r.workers[m.Name] = true
	case jopWorkerLeft:
		delete(r.workers, m.Name)
	case jopSnapshot: // the snapshot's own wants hold its tasks now
		delete(r.clients, replayClient)
		s.handle(EvReleaseKeys{Client: replayClient, Keys: r.snapshotKeys})
		r.snapshotKeys = nil
	default:
		if isSharedOp(m.Op) {
			st := s.sharedState()
			st.tick(m.Start) // what expired before this request, expired before it live too
			st.handle(cl, m, m.Start)
			s.applyShared()
		}
	}
	if m.Op != wire.OpUpdateGraph { // a graph's tasks now belong to the core
		wire.ReleaseMsg(m)
	}
	return nil
}

// finish ends the replay: parked shared-state requests are dropped (their clients were told
// the connection closed), clients get their grace, and the workers the journal knew are
// awaited.
func (r *replay) finish() {
	s := r.s
	now := s.cfg.Clock()
	if s.shared.st != nil {
		s.shared.st.dropWaiters()
		s.applyShared()
	}
	for cl := range r.clients {
		if cl != holderClient && cl < replayClient {
			s.orphans[cl] = now.Add(s.cfg.ClientGrace)
		}
	}
	if r.maxC >= s.nextC {
		s.nextC = r.maxC + 1
	}
	s.recov = &recovery{until: now.Add(s.cfg.RecoveryWait), expect: r.workers, at: map[WorkerID]int{}}
	s.log.Info("resuming from the journal", "dir", s.cfg.Journal, "records", r.records,
		"tasks", s.core.NTasks(), "clients", len(s.orphans), "workers_expected", len(r.workers))
}

// recovery holds the workers that register again after a restart, so that they join the core
// together: none is given work another one already holds the result of.
type recovery struct {
	until  time.Time
	expect map[string]bool // workers the journal knew, not yet back
	joins  []EvWorkerJoined
	at     map[WorkerID]int // index in joins
}

// hold keeps a join for later; it reports false when the recovery is over.
func (r *recovery) hold(ev EvWorkerJoined) bool {
	if i, ok := r.at[ev.Replaces]; ok { // its previous registration never reached the core
		r.joins[i].Worker = -1
		delete(r.at, ev.Replaces)
		ev.Holds = append(r.joins[i].Holds, ev.Holds...)
		ev.Replaces = 0
	}
	r.at[ev.Worker] = len(r.joins)
	r.joins = append(r.joins, ev)
	delete(r.expect, ev.Name)
	return true
}

// addHolds adds a held worker's later add_keys to its join.
func (r *recovery) addHolds(w WorkerID, items []wire.Item) bool {
	i, ok := r.at[w]
	if ok {
		r.joins[i].Holds = append(r.joins[i].Holds, items...)
	}
	return ok
}

// drop forgets a held worker that left before the recovery ended.
func (r *recovery) drop(w WorkerID) {
	if i, ok := r.at[w]; ok {
		r.joins[i].Worker = -1
		delete(r.at, w)
	}
}

// recoveryTick ends the recovery when every expected worker is back or the wait is over.
func (s *Server) recoveryTick(now time.Time) {
	r := s.recov
	if len(r.expect) > 0 && now.Before(r.until) {
		return
	}
	s.recov = nil
	joins := r.joins[:0]
	holds := 0
	for _, j := range r.joins {
		if j.Worker >= 0 {
			joins = append(joins, j)
			holds += len(j.Holds)
		}
	}
	missing := make([]string, 0, len(r.expect))
	for name := range r.expect {
		missing = append(missing, name)
	}
	s.log.Info("recovered: placing work again", "workers", len(joins), "results_kept_on_workers", holds,
		"workers_not_back", missing)
	s.handle(EvWorkersJoined{Joins: joins})
}

// releaseOrphans lets go of what clients the journal knew wanted, once their grace is over.
func (s *Server) releaseOrphans(now time.Time) {
	for cl, until := range s.orphans {
		if now.After(until) {
			delete(s.orphans, cl)
			s.log.Info("a client known from the journal did not come back: releasing its keys", "client", cl)
			s.clientGone(cl)
		}
	}
}
