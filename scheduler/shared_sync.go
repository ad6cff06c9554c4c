package scheduler

import (
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Semaphores (a Lock is a semaphore of one lease) and events.
//
// A lease belongs to the client connection that acquired it and lives lease_timeout past its
// last refresh: the holder's client refreshes its leases periodically, so a lease outlives
// its holder only briefly whatever happens to it. A closed connection frees its leases at
// once; a holder that hangs, or is cut off from the scheduler, loses them at expiry.

// semaphore is a named semaphore: max leases, the leases held (by lease id) and the
// acquires waiting in order. It exists while it has leases or waiters.
type semaphore struct {
	max     int
	leases  map[string]*lease
	waiters []waiter
}

type lease struct {
	client  ClientID
	ttl     int64 // ns
	expires int64 // unix ns
}

// maxLeases bounds a semaphore's max_leases.
const maxLeases = 1 << 20

func (sh *shared) semAcquire(w waiter, m *wire.Msg, now int64) {
	if err := sh.checkName("lease id (key)", m.Key); err != nil {
		sh.fail(w.client, w.id, wire.CodeProtocol, "semaphore_acquire: "+err.Error())
		return
	}
	if m.N < 1 || m.N > maxLeases {
		sh.fail(w.client, w.id, wire.CodeLimit, fmt.Sprintf("semaphore_acquire %q: max_leases %d is outside 1…%d",
			m.Name, m.N, maxLeases))
		return
	}
	ttl := int64(DefaultLeaseTimeout)
	if m.LeaseTimeout > 0 {
		ttl = int64(min(m.LeaseTimeout, 1e9) * 1e9)
	}
	w.lease, w.ttl = m.Key, max(ttl, int64(time.Millisecond))
	s := sh.sems[m.Name]
	if s == nil {
		if !sh.roomFor(w.client, w.id, m.Op, m.Name) {
			return
		}
		s = &semaphore{max: int(m.N), leases: map[string]*lease{}}
		sh.sems[m.Name] = s
	}
	if _, held := s.leases[m.Key]; held {
		sh.fail(w.client, w.id, wire.CodeProtocol, fmt.Sprintf("semaphore_acquire %q: lease %q is already held", m.Name, m.Key))
		return
	}
	switch {
	case len(s.waiters) == 0 && len(s.leases) < s.max:
		sh.lease(s, w, now)
	case m.Timeout == 0:
		sh.ok(w.client, w.id, &wire.Msg{})
	case sh.parkable(w, len(s.waiters), m.Op, m.Name):
		s.waiters = append(s.waiters, w)
	}
	sh.tidySem(m.Name, s)
}

// lease grants w its lease and answers it.
func (sh *shared) lease(s *semaphore, w waiter, now int64) {
	l := &lease{client: w.client, ttl: w.ttl, expires: now + w.ttl}
	s.leases[w.lease] = l
	sh.noteDue(l.expires)
	sh.ok(w.client, w.id, &wire.Msg{Accepted: true})
}

// grant hands free leases to waiting acquires in order.
func (sh *shared) grant(s *semaphore, now int64) {
	for len(s.waiters) > 0 && len(s.leases) < s.max {
		w := s.waiters[0]
		s.waiters = s.waiters[1:]
		if _, held := s.leases[w.lease]; held {
			sh.fail(w.client, w.id, wire.CodeProtocol, fmt.Sprintf("semaphore_acquire: lease %q is already held", w.lease))
			continue
		}
		sh.lease(s, w, now)
	}
}

func (sh *shared) semRelease(cl ClientID, id uint64, name, leaseID string, now int64) {
	s := sh.sems[name]
	var l *lease
	if s != nil {
		l = s.leases[leaseID]
	}
	if l == nil || l.client != cl {
		sh.ok(cl, id, &wire.Msg{}) // not held (released too often, or expired)
		return
	}
	delete(s.leases, leaseID)
	sh.ok(cl, id, &wire.Msg{Accepted: true})
	sh.grant(s, now)
	sh.tidySem(name, s)
}

// semRefresh extends cl's leases named in ids; unknown ones (expired) are ignored.
func (sh *shared) semRefresh(cl ClientID, name string, ids []string, now int64) {
	s := sh.sems[name]
	if s == nil {
		return
	}
	for _, id := range ids {
		if l := s.leases[id]; l != nil && l.client == cl {
			l.expires = now + l.ttl
		}
	}
}

// tidySem forgets a semaphore with no leases and no waiters.
func (sh *shared) tidySem(name string, s *semaphore) {
	if len(s.leases) == 0 && len(s.waiters) == 0 {
		delete(sh.sems, name)
	}
}

// ---- events ----

// sevent is a named event; it exists while set or waited on.
type sevent struct {
	set     bool
	waiters []waiter
}

func (sh *shared) eventSet(cl ClientID, id uint64, name string) {
	e := sh.events[name]
	if e == nil {
		if !sh.roomFor(cl, id, wire.OpEventSet, name) {
			return
		}
		e = &sevent{}
		sh.events[name] = e
	}
	e.set = true
	sh.ok(cl, id, &wire.Msg{Accepted: true})
	for _, w := range e.waiters {
		sh.ok(w.client, w.id, &wire.Msg{Accepted: true})
	}
	e.waiters = nil
}

func (sh *shared) eventClear(cl ClientID, id uint64, name string) {
	if e := sh.events[name]; e != nil {
		e.set = false
		sh.tidyEvent(name, e)
	}
	sh.ok(cl, id, &wire.Msg{Accepted: true})
}

func (sh *shared) eventWait(w waiter, name string, now bool) {
	e := sh.events[name]
	switch {
	case e != nil && e.set:
		sh.ok(w.client, w.id, &wire.Msg{Accepted: true})
	case now:
		sh.ok(w.client, w.id, &wire.Msg{})
	case e == nil:
		if sh.roomFor(w.client, w.id, wire.OpEventWait, name) {
			sh.events[name] = &sevent{waiters: []waiter{w}}
		}
	case sh.parkable(w, len(e.waiters), wire.OpEventWait, name):
		e.waiters = append(e.waiters, w)
	}
}

// tidyEvent forgets an unset event nobody waits on.
func (sh *shared) tidyEvent(name string, e *sevent) {
	if !e.set && len(e.waiters) == 0 {
		delete(sh.events, name)
	}
}
