package scheduler

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Shared state held by the scheduler for clients and tasks, with dask.distributed's names:
// variables, queues, semaphores (and locks, semaphores of one lease), events and published
// datasets (docs/protocol.md §3.2, "Shared state").
//
// shared is plain Go owned by the driver goroutine: requests go in with the time as a
// value, effects come out in order (replies, and keys to want or release for a client), so it
// runs without sockets in tests. A request that must wait (a get from an empty queue, an
// acquire of a taken semaphore, a wait on an unset event) is parked with its client, request
// id and deadline, and answered later by id: nothing blocks the driver.
//
// Values are opaque bytes with an encoding (msgpack or pickle, never decoded here) or the key
// of a future. The keys a value refers to are held — wanted by holderClient, a client id the
// driver never assigns — for as long as some value refers to them, so the core keeps them.
// A getter is made to want a value's keys before the value lets go of them.

// holderClient is the pseudo-client that wants the keys shared state refers to. The driver
// assigns ids from 1, so no connection has it, and key_state actions for it go nowhere.
const holderClient ClientID = 0

// EncFuture is the encoding of a shared value that is a future: Item.Key names it, no bytes.
const EncFuture = "future"

// SharedLimits bound what shared state holds; every refusal names the limit.
type SharedLimits struct {
	MaxValueBytes int // bytes of one value (larger ones must be scattered and passed as futures)
	MaxQueueItems int // items in one queue, whatever its maxsize
	MaxObjects    int // named objects of every kind together
	MaxWaiters    int // parked requests per object
	MaxHeldKeys   int // keys one value may refer to
	MaxReplyBytes int // value bytes in one reply (a batch get returns fewer items beyond)
	MaxNameBytes  int // bytes of a name or lease id
}

// DefaultSharedLimits returns the limits documented in docs/protocol.md.
func DefaultSharedLimits() SharedLimits {
	return SharedLimits{MaxValueBytes: 1 << 20, MaxQueueItems: 100_000, MaxObjects: 100_000,
		MaxWaiters: 10_000, MaxHeldKeys: 100_000, MaxReplyBytes: 32 << 20, MaxNameBytes: 4096}
}

// DefaultLeaseTimeout is how long a semaphore lease lives without a refresh when the acquire
// does not say (dask's distributed.scheduler.locks.lease-timeout).
const DefaultLeaseTimeout = 30 * time.Second

// sharedEffect is one output of shared, performed by the driver in order: a reply to a
// client, or keys a client (holderClient for shared state itself) now wants or releases.
type sharedEffect struct {
	client  ClientID
	reply   *wire.Msg
	want    []string
	release []string
}

// sValue is a stored value: a future's key, or bytes with their encoding.
type sValue struct {
	key   string // EncFuture: the future's key
	enc   string
	data  []byte
	holds []string // keys kept alive while the value is stored
}

// waiter is a parked request.
type waiter struct {
	client   ClientID
	id       uint64
	deadline int64 // unix ns; 0: none
	n        int   // queue_get: batch size (-1: all); queue_put: maxsize
	lease    string
	ttl      int64   // semaphore_acquire: lease lifetime, ns
	val      *sValue // queue_put waiting for room
}

type shared struct {
	lim      SharedLimits
	known    func(key string) bool // whether the core knows a key
	vars     map[string]*variable
	queues   map[string]*squeue
	sems     map[string]*semaphore
	events   map[string]*sevent
	datasets map[string]*sValue
	holds    map[string]int32 // key → stored values referring to it
	due      int64            // earliest deadline or lease expiry (unix ns); 0: none
	out      []sharedEffect
}

func newShared(lim SharedLimits, known func(string) bool) *shared {
	return &shared{lim: lim, known: known, vars: map[string]*variable{}, queues: map[string]*squeue{},
		sems: map[string]*semaphore{}, events: map[string]*sevent{}, datasets: map[string]*sValue{},
		holds: map[string]int32{}}
}

// isSharedOp reports whether op is served by shared.
func isSharedOp(op string) bool {
	switch op {
	case wire.OpVariableSet, wire.OpVariableGet, wire.OpVariableDelete, wire.OpQueuePut, wire.OpQueueGet,
		wire.OpQueueSize, wire.OpSemaphoreAcquire, wire.OpSemaphoreRelease, wire.OpSemaphoreRefresh,
		wire.OpSemaphoreValue, wire.OpEventSet, wire.OpEventClear, wire.OpEventWait, wire.OpPublish,
		wire.OpUnpublish, wire.OpGetDataset, wire.OpListDatasets:
		return true
	}
	return false
}

// handle serves one request from client cl at time now (unix ns). m is not kept.
func (sh *shared) handle(cl ClientID, m *wire.Msg, now int64) {
	if m.Op != wire.OpListDatasets {
		if err := sh.checkName("name", m.Name); err != nil {
			sh.fail(cl, m.ID, wire.CodeProtocol, m.Op+": "+err.Error())
			return
		}
	}
	if math.IsNaN(m.Timeout) || math.IsNaN(m.LeaseTimeout) {
		sh.fail(cl, m.ID, wire.CodeProtocol, m.Op+": timeout is not a number")
		return
	}
	w := waiter{client: cl, id: m.ID, deadline: deadline(now, m.Timeout)}
	switch m.Op {
	case wire.OpVariableSet:
		sh.variableSet(cl, m)
	case wire.OpVariableGet:
		sh.variableGet(w, m.Name, m.Timeout == 0)
	case wire.OpVariableDelete:
		sh.variableDelete(cl, m.ID, m.Name)
	case wire.OpQueuePut:
		sh.queuePut(w, m)
	case wire.OpQueueGet:
		sh.queueGet(w, m.Name, int(max(min(m.N, math.MaxInt32), math.MinInt32)), m.Timeout == 0)
	case wire.OpQueueSize:
		n := 0
		if q := sh.queues[m.Name]; q != nil {
			n = q.len()
		}
		sh.ok(cl, m.ID, &wire.Msg{N: int64(n)})
	case wire.OpSemaphoreAcquire:
		sh.semAcquire(w, m, now)
	case wire.OpSemaphoreRelease:
		sh.semRelease(cl, m.ID, m.Name, m.Key, now)
	case wire.OpSemaphoreRefresh:
		sh.semRefresh(cl, m.Name, m.Keys, now)
	case wire.OpSemaphoreValue:
		n := 0
		if s := sh.sems[m.Name]; s != nil {
			n = len(s.leases)
		}
		sh.ok(cl, m.ID, &wire.Msg{N: int64(n)})
	case wire.OpEventSet:
		sh.eventSet(cl, m.ID, m.Name)
	case wire.OpEventClear:
		sh.eventClear(cl, m.ID, m.Name)
	case wire.OpEventWait:
		sh.eventWait(w, m.Name, m.Timeout == 0)
	case wire.OpPublish:
		sh.publish(cl, m)
	case wire.OpUnpublish:
		v, ok := sh.datasets[m.Name]
		if ok {
			delete(sh.datasets, m.Name)
			sh.unhold(v.holds)
		}
		sh.ok(cl, m.ID, &wire.Msg{Accepted: ok})
	case wire.OpGetDataset:
		if v, ok := sh.datasets[m.Name]; ok {
			sh.sendValues(cl, m.ID, []*sValue{v})
		} else {
			sh.ok(cl, m.ID, &wire.Msg{})
		}
	case wire.OpListDatasets:
		names := make([]string, 0, len(sh.datasets))
		for k := range sh.datasets {
			names = append(names, k)
		}
		slices.Sort(names)
		sh.ok(cl, m.ID, &wire.Msg{Keys: names})
	default:
		sh.fail(cl, m.ID, wire.CodeUnknownOp, fmt.Sprintf("op %q is not shared state", m.Op))
	}
	sh.noteDue(w.deadline)
}

// deadline turns a request's timeout (seconds; 0: do not wait; < 0: no limit) into a unix-ns
// deadline, 0 meaning none.
func deadline(now int64, timeout float64) int64 {
	if timeout <= 0 || timeout > 1e9 {
		return 0
	}
	return now + max(int64(timeout*1e9), 1)
}

func (sh *shared) checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", what)
	case len(s) > sh.lim.MaxNameBytes:
		return fmt.Errorf("%s is %d bytes, over the limit of %d bytes", what, len(s), sh.lim.MaxNameBytes)
	}
	return nil
}

// objects counts the named objects of every kind.
func (sh *shared) objects() int {
	return len(sh.vars) + len(sh.queues) + len(sh.sems) + len(sh.events) + len(sh.datasets)
}

// roomFor reports whether one more named object fits, replying with the limit when not.
func (sh *shared) roomFor(cl ClientID, id uint64, op, name string) bool {
	if sh.objects() < sh.lim.MaxObjects {
		return true
	}
	sh.fail(cl, id, wire.CodeLimit, fmt.Sprintf("%s %q: the scheduler already holds %d shared objects "+
		"(variables, queues, semaphores, events and datasets), the limit", op, name, sh.lim.MaxObjects))
	return false
}

// parkable reports whether an object with n parked requests may take one more.
func (sh *shared) parkable(w waiter, n int, op, name string) bool {
	if n < sh.lim.MaxWaiters {
		return true
	}
	sh.fail(w.client, w.id, wire.CodeLimit, fmt.Sprintf("%s %q: %d requests already wait on it, the limit",
		op, name, sh.lim.MaxWaiters))
	return false
}

// ---- values and holds ----

// valueOf reads the value a request carries: items [one Item] and its bytes in payload, plus
// the keys it refers to. ok is false after a reply saying what is wrong.
func (sh *shared) valueOf(cl ClientID, m *wire.Msg) (*sValue, bool) {
	bad := func(code, msg string) (*sValue, bool) {
		sh.fail(cl, m.ID, code, fmt.Sprintf("%s %q: %s", m.Op, m.Name, msg))
		return nil, false
	}
	if len(m.Items) != 1 {
		return bad(wire.CodeProtocol, fmt.Sprintf("expected one item describing the value, got %d", len(m.Items)))
	}
	it := m.Items[0]
	v := &sValue{enc: it.Encoding}
	switch it.Encoding {
	case EncFuture:
		if it.Key == "" || len(m.Payload) > 0 {
			return bad(wire.CodeProtocol, "a future value has a key and no payload")
		}
		v.key = it.Key
	case wire.EncMsgpack, wire.EncPickle:
		if len(m.Payload) > sh.lim.MaxValueBytes {
			return bad(wire.CodeLimit, fmt.Sprintf("the value is %d bytes, over the limit of %d bytes for "+
				"shared state: scatter it and store the future instead", len(m.Payload), sh.lim.MaxValueBytes))
		}
		v.data = m.Payload
	default:
		return bad(wire.CodeProtocol, fmt.Sprintf("encoding %q is not future, msgpack or pickle", it.Encoding))
	}
	if len(m.Keys) > sh.lim.MaxHeldKeys {
		return bad(wire.CodeLimit, fmt.Sprintf("the value refers to %d futures, over the limit of %d",
			len(m.Keys), sh.lim.MaxHeldKeys))
	}
	holds := slices.Clone(m.Keys)
	if v.key != "" {
		holds = append(holds, v.key)
	}
	slices.Sort(holds)
	v.holds = slices.Compact(holds)
	for _, k := range v.holds {
		if sh.known != nil && !sh.known(k) {
			return bad(wire.CodeLost, fmt.Sprintf("key %q is not known to the scheduler (every future of it "+
				"was released)", k))
		}
	}
	return v, true
}

// hold makes shared state want keys (the core keeps them while any value refers to them).
func (sh *shared) hold(keys []string) {
	var fresh []string
	for _, k := range keys {
		if sh.holds[k]++; sh.holds[k] == 1 {
			fresh = append(fresh, k)
		}
	}
	if len(fresh) > 0 {
		sh.out = append(sh.out, sharedEffect{client: holderClient, want: fresh})
	}
}

// unhold drops one reference to each of keys; those no value refers to any more are released.
func (sh *shared) unhold(keys []string) {
	var gone []string
	for _, k := range keys {
		n, ok := sh.holds[k]
		if !ok {
			continue // forgotten by a restart
		}
		if n <= 1 {
			delete(sh.holds, k)
			gone = append(gone, k)
		} else {
			sh.holds[k] = n - 1
		}
	}
	if len(gone) > 0 {
		sh.out = append(sh.out, sharedEffect{client: holderClient, release: gone})
	}
}

// restarted forgets every hold: a restart dropped all wants in the core. Values stay; their
// futures now name cancelled keys.
func (sh *shared) restarted() { clear(sh.holds) }

// ---- replies ----

func (sh *shared) ok(cl ClientID, id uint64, m *wire.Msg) {
	if id == 0 {
		return // a request nobody waits for (semaphore_refresh)
	}
	m.Op, m.ID = wire.OpOK, id
	sh.out = append(sh.out, sharedEffect{client: cl, reply: m})
}

func (sh *shared) fail(cl ClientID, id uint64, code, msg string) {
	sh.out = append(sh.out, sharedEffect{client: cl, reply: &wire.Msg{Op: wire.OpError, ID: id, Code: code, Message: msg}})
}

// sendValues answers with values (items, their bytes concatenated in payload, and in keys the
// futures they refer to), and makes cl want those keys before anything lets go of them.
func (sh *shared) sendValues(cl ClientID, id uint64, vals []*sValue) {
	r := &wire.Msg{Accepted: true, Items: make([]wire.Item, len(vals))}
	n := 0
	for _, v := range vals {
		n += len(v.data)
	}
	r.Payload = make([]byte, 0, n)
	var keys []string
	for i, v := range vals {
		r.Items[i] = wire.Item{Key: v.key, Encoding: v.enc, NBytes: int64(len(v.data))}
		r.Payload = append(r.Payload, v.data...)
		keys = append(keys, v.holds...)
	}
	if len(vals) > 1 {
		slices.Sort(keys)
		keys = slices.Compact(keys)
	}
	r.Keys = keys
	sh.ok(cl, id, r)
	if len(keys) > 0 {
		sh.out = append(sh.out, sharedEffect{client: cl, want: keys})
	}
}

// take returns the effects produced since the last call; the driver performs them in order.
func (sh *shared) take() []sharedEffect {
	out := sh.out
	sh.out = sh.out[len(sh.out):]
	if len(sh.out) == 0 {
		sh.out = nil
	}
	return out
}

// ---- time and departures ----

func (sh *shared) noteDue(t int64) {
	if t != 0 && (sh.due == 0 || t < sh.due) {
		sh.due = t
	}
}

// tick answers parked requests whose deadline passed and frees leases not refreshed in time.
func (sh *shared) tick(now int64) {
	if sh.due == 0 || now < sh.due {
		return
	}
	sh.due = 0
	expired := func(w waiter) bool { return w.deadline != 0 && w.deadline <= now }
	for name, v := range sh.vars {
		v.waiters = sh.expire(v.waiters, expired, func(w waiter) { sh.ok(w.client, w.id, &wire.Msg{}) })
		sh.dueOf(v.waiters)
		sh.tidyVar(name, v)
	}
	for name, q := range sh.queues {
		q.getters = sh.expire(q.getters, expired, func(w waiter) { sh.ok(w.client, w.id, &wire.Msg{}) })
		q.putters = sh.expire(q.putters, expired, func(w waiter) {
			sh.unhold(w.val.holds)
			sh.ok(w.client, w.id, &wire.Msg{})
		})
		sh.serveQueue(q) // a batch getter that gave up may have been blocking others
		sh.dueOf(q.getters)
		sh.dueOf(q.putters)
		sh.tidyQueue(name, q)
	}
	for name, s := range sh.sems {
		s.waiters = sh.expire(s.waiters, expired, func(w waiter) { sh.ok(w.client, w.id, &wire.Msg{}) })
		for id, l := range s.leases {
			if l.expires <= now {
				delete(s.leases, id)
			}
		}
		sh.grant(s, now)
		for _, l := range s.leases {
			sh.noteDue(l.expires)
		}
		sh.dueOf(s.waiters)
		sh.tidySem(name, s)
	}
	for name, e := range sh.events {
		e.waiters = sh.expire(e.waiters, expired, func(w waiter) { sh.ok(w.client, w.id, &wire.Msg{}) })
		sh.dueOf(e.waiters)
		sh.tidyEvent(name, e)
	}
}

// expire removes the waiters for which gone holds, calling answer for each, and keeps the
// others in order.
func (sh *shared) expire(ws []waiter, gone func(waiter) bool, answer func(waiter)) []waiter {
	return slices.DeleteFunc(ws, func(w waiter) bool {
		if gone(w) {
			answer(w)
			return true
		}
		return false
	})
}

func (sh *shared) dueOf(ws []waiter) {
	for _, w := range ws {
		sh.noteDue(w.deadline)
	}
}

// clientLeft drops cl's parked requests and frees the leases it held.
func (sh *shared) clientLeft(cl ClientID, now int64) {
	mine := func(w waiter) bool { return w.client == cl }
	drop := func(waiter) {}
	for name, v := range sh.vars {
		v.waiters = sh.expire(v.waiters, mine, drop)
		sh.tidyVar(name, v)
	}
	for name, q := range sh.queues {
		q.getters = sh.expire(q.getters, mine, drop)
		q.putters = sh.expire(q.putters, mine, func(w waiter) { sh.unhold(w.val.holds) })
		sh.serveQueue(q)
		sh.tidyQueue(name, q)
	}
	for name, s := range sh.sems {
		s.waiters = sh.expire(s.waiters, mine, drop)
		for id, l := range s.leases {
			if l.client == cl {
				delete(s.leases, id)
			}
		}
		sh.grant(s, now)
		sh.tidySem(name, s)
	}
	for name, e := range sh.events {
		e.waiters = sh.expire(e.waiters, mine, drop)
		sh.tidyEvent(name, e)
	}
}

// SharedStats counts what shared state holds (Server.SharedStats).
type SharedStats struct {
	Variables, Queues, QueuedItems, Semaphores, Leases, Events, Datasets, Waiters, HeldKeys int
}

func (sh *shared) stats() SharedStats {
	st := SharedStats{Variables: len(sh.vars), Queues: len(sh.queues), Semaphores: len(sh.sems),
		Events: len(sh.events), Datasets: len(sh.datasets), HeldKeys: len(sh.holds)}
	for _, v := range sh.vars {
		st.Waiters += len(v.waiters)
	}
	for _, q := range sh.queues {
		st.QueuedItems += q.len()
		st.Waiters += len(q.getters) + len(q.putters)
	}
	for _, s := range sh.sems {
		st.Leases += len(s.leases)
		st.Waiters += len(s.waiters)
	}
	for _, e := range sh.events {
		st.Waiters += len(e.waiters)
	}
	return st
}
