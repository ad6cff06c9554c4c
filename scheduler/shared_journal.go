package scheduler

import "github.com/shoal-dev/shoal/internal/wire"

// Shared state in the journal (journal.go): requests that change it are journaled as they
// come and replayed in order; a compaction writes the state itself as the requests that
// rebuild it. Semaphores (and so Locks) are not journaled: their leases belong to connections,
// and a restart frees them.

// snapshot returns requests that rebuild the stored values: variables, queues (in order),
// published datasets and set events. Parked requests are not included.
func (sh *shared) snapshot() []*wire.Msg {
	var out []*wire.Msg
	value := func(op, name string, v *sValue) *wire.Msg {
		m := &wire.Msg{Op: op, Name: name, Client: int64(holderClient), Payload: v.data,
			Items: []wire.Item{{Key: v.key, Encoding: v.enc}}}
		for _, k := range v.holds {
			if k != v.key {
				m.Keys = append(m.Keys, k)
			}
		}
		return m
	}
	for name, vr := range sh.vars {
		if vr.val != nil {
			out = append(out, value(wire.OpVariableSet, name, vr.val))
		}
	}
	for name, q := range sh.queues {
		for _, v := range q.items[q.head:] {
			out = append(out, value(wire.OpQueuePut, name, v))
		}
	}
	for name, v := range sh.datasets {
		m := value(wire.OpPublish, name, v)
		m.Accepted = true
		out = append(out, m)
	}
	for name, e := range sh.events {
		if e.set {
			out = append(out, &wire.Msg{Op: wire.OpEventSet, Name: name, Client: int64(holderClient)})
		}
	}
	return out
}

// dropWaiters forgets every parked request (after a replay: the clients that made them were
// told their connection closed). Values that waited to be put let go of what they held.
func (sh *shared) dropWaiters() {
	for name, vr := range sh.vars {
		vr.waiters = nil
		sh.tidyVar(name, vr)
	}
	for name, q := range sh.queues {
		for _, w := range q.putters {
			sh.unhold(w.val.holds)
		}
		q.getters, q.putters = nil, nil
		sh.tidyQueue(name, q)
	}
	for name, e := range sh.events {
		e.waiters = nil
		sh.tidyEvent(name, e)
	}
	for name, s := range sh.sems {
		s.waiters = nil
		sh.tidySem(name, s)
	}
	sh.due = 0
}
