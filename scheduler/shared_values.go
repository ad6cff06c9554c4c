package scheduler

import (
	"fmt"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Variables, queues and published datasets: shared state that stores values.

// variable is a named value; gets before the first set wait for it.
type variable struct {
	val     *sValue
	waiters []waiter
}

func (sh *shared) variableSet(cl ClientID, m *wire.Msg) {
	v, ok := sh.valueOf(cl, m)
	if !ok {
		return
	}
	vr := sh.vars[m.Name]
	if vr == nil {
		if !sh.roomFor(cl, m.ID, m.Op, m.Name) {
			return
		}
		vr = &variable{}
		sh.vars[m.Name] = vr
	}
	sh.hold(v.holds) // before the old value lets go: a key in both stays wanted
	if old := vr.val; old != nil {
		sh.unhold(old.holds)
	}
	vr.val = v
	sh.ok(cl, m.ID, &wire.Msg{Accepted: true})
	for _, w := range vr.waiters {
		sh.sendValues(w.client, w.id, []*sValue{v})
	}
	vr.waiters = nil
}

func (sh *shared) variableGet(w waiter, name string, now bool) {
	vr := sh.vars[name]
	switch {
	case vr != nil && vr.val != nil:
		sh.sendValues(w.client, w.id, []*sValue{vr.val})
	case now:
		sh.ok(w.client, w.id, &wire.Msg{})
	case vr == nil:
		if sh.roomFor(w.client, w.id, wire.OpVariableGet, name) {
			sh.vars[name] = &variable{waiters: []waiter{w}}
		}
	case sh.parkable(w, len(vr.waiters), wire.OpVariableGet, name):
		vr.waiters = append(vr.waiters, w)
	}
}

func (sh *shared) variableDelete(cl ClientID, id uint64, name string) {
	vr := sh.vars[name]
	if vr != nil && vr.val != nil {
		sh.unhold(vr.val.holds)
		vr.val = nil
		sh.tidyVar(name, vr)
	}
	sh.ok(cl, id, &wire.Msg{Accepted: vr != nil})
}

// tidyVar forgets a variable with no value and no waiters.
func (sh *shared) tidyVar(name string, vr *variable) {
	if vr.val == nil && len(vr.waiters) == 0 {
		delete(sh.vars, name)
	}
}

// ---- datasets ----

func (sh *shared) publish(cl ClientID, m *wire.Msg) {
	v, ok := sh.valueOf(cl, m)
	if !ok {
		return
	}
	old, exists := sh.datasets[m.Name]
	if exists && !m.Accepted { // accepted: override
		sh.ok(cl, m.ID, &wire.Msg{})
		return
	}
	if !exists && !sh.roomFor(cl, m.ID, m.Op, m.Name) {
		return
	}
	sh.hold(v.holds)
	if exists {
		sh.unhold(old.holds)
	}
	sh.datasets[m.Name] = v
	sh.ok(cl, m.ID, &wire.Msg{Accepted: true})
}

// ---- queues ----

// squeue is a FIFO of values with the gets and puts waiting on it. It exists while it holds
// items or waiters; its maxsize travels with each put.
type squeue struct {
	items   []*sValue
	head    int
	getters []waiter
	putters []waiter // full: each holds the value it puts
}

func (q *squeue) len() int { return len(q.items) - q.head }

func (q *squeue) push(v *sValue) { q.items = append(q.items, v) }

func (q *squeue) pop() *sValue {
	v := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head >= 1024 && q.head*2 >= len(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return v
}

// room reports whether a put with this maxsize (0: none) may add an item now.
func (sh *shared) room(q *squeue, maxsize int) bool {
	n := q.len()
	return n < sh.lim.MaxQueueItems && (maxsize <= 0 || n < maxsize)
}

func (sh *shared) queuePut(w waiter, m *wire.Msg) {
	v, ok := sh.valueOf(w.client, m)
	if !ok {
		return
	}
	if m.N < 0 || m.N > int64(sh.lim.MaxQueueItems) {
		sh.fail(w.client, w.id, wire.CodeLimit, fmt.Sprintf("queue_put %q: maxsize %d is outside 0…%d, "+
			"the limit of items per queue", m.Name, m.N, sh.lim.MaxQueueItems))
		return
	}
	w.n, w.val = int(m.N), v
	q := sh.queues[m.Name]
	if q == nil {
		if !sh.roomFor(w.client, w.id, m.Op, m.Name) {
			return
		}
		q = &squeue{}
		sh.queues[m.Name] = q
	}
	switch {
	case len(q.putters) == 0 && sh.room(q, w.n):
		sh.hold(v.holds)
		q.push(v)
		sh.ok(w.client, w.id, &wire.Msg{Accepted: true})
		sh.serveQueue(q)
	case w.n == 0 && q.len() >= sh.lim.MaxQueueItems:
		sh.fail(w.client, w.id, wire.CodeLimit, fmt.Sprintf("queue_put %q: the queue holds %d items, the "+
			"limit per queue", m.Name, sh.lim.MaxQueueItems))
	case m.Timeout == 0:
		sh.ok(w.client, w.id, &wire.Msg{}) // full
	case sh.parkable(w, len(q.putters), m.Op, m.Name):
		sh.hold(v.holds)
		q.putters = append(q.putters, w)
	}
	sh.tidyQueue(m.Name, q)
}

func (sh *shared) queueGet(w waiter, name string, batch int, now bool) {
	if batch > sh.lim.MaxQueueItems {
		sh.fail(w.client, w.id, wire.CodeLimit, fmt.Sprintf("queue_get %q: batch %d is over the limit of %d "+
			"items per queue", name, batch, sh.lim.MaxQueueItems))
		return
	}
	w.n = max(batch, -1)
	now = now || w.n < 0 // batch=True returns what is there, without waiting
	q := sh.queues[name]
	if q == nil {
		if now {
			sh.answerGet(w, nil)
			return
		}
		if !sh.roomFor(w.client, w.id, wire.OpQueueGet, name) {
			return
		}
		q = &squeue{}
		sh.queues[name] = q
	}
	switch {
	case len(q.getters) == 0 && (w.n < 0 || q.len() >= max(w.n, 1)):
		sh.answerGet(w, sh.takeItems(q, w.n))
		sh.admitPutters(q)
	case now && len(q.getters) == 0:
		sh.answerGet(w, sh.takeItems(q, w.n)) // what there is, fewer than a batch asks for
		sh.admitPutters(q)
	case now:
		sh.answerGet(w, nil)
	case sh.parkable(w, len(q.getters), wire.OpQueueGet, name):
		q.getters = append(q.getters, w)
	}
	sh.tidyQueue(name, q)
}

// takeItems pops what a get of batch n receives: one item (n == 0), n items, or all (n < 0),
// stopping early when the reply would exceed MaxReplyBytes (at least one item is taken).
func (sh *shared) takeItems(q *squeue, n int) []*sValue {
	want := q.len()
	switch {
	case n == 0:
		want = min(want, 1)
	case n > 0:
		want = min(want, n)
	}
	out := make([]*sValue, 0, want)
	bytes := 0
	for len(out) < want {
		v := q.items[q.head]
		if len(out) > 0 && bytes+len(v.data) > sh.lim.MaxReplyBytes {
			break
		}
		bytes += len(v.data)
		out = append(out, q.pop())
	}
	return out
}

// answerGet replies to a get: the value (a plain get), the list (a batch get, possibly
// empty), or "not accepted" (a plain get that found nothing in time).
func (sh *shared) answerGet(w waiter, vals []*sValue) {
	if w.n == 0 && len(vals) == 0 {
		sh.ok(w.client, w.id, &wire.Msg{})
		return
	}
	sh.sendValues(w.client, w.id, vals)
	for _, v := range vals {
		sh.unhold(v.holds) // after the getter wants them
	}
}

// serveQueue hands items to waiting getters in order, then lets waiting puts in.
func (sh *shared) serveQueue(q *squeue) {
	for {
		for len(q.getters) > 0 {
			w := q.getters[0]
			if q.len() < max(w.n, 1) {
				break
			}
			q.getters = q.getters[1:]
			sh.answerGet(w, sh.takeItems(q, w.n))
		}
		if !sh.admitPutters(q) {
			return
		}
	}
}

// admitPutters moves waiting puts into the queue while there is room; it reports whether any
// moved.
func (sh *shared) admitPutters(q *squeue) bool {
	moved := false
	for len(q.putters) > 0 && sh.room(q, q.putters[0].n) {
		w := q.putters[0]
		q.putters = q.putters[1:]
		q.push(w.val) // its keys were held when it was parked
		sh.ok(w.client, w.id, &wire.Msg{Accepted: true})
		moved = true
	}
	return moved
}

// tidyQueue forgets an empty queue nobody waits on.
func (sh *shared) tidyQueue(name string, q *squeue) {
	if q.len() == 0 && len(q.getters) == 0 && len(q.putters) == 0 {
		delete(sh.queues, name)
	}
}
