package scheduler

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/shoal-dev/shoal/internal/wire"
)

// sharedRig drives a shared without sockets and renders its effects as lines.
type sharedRig struct {
	t   *testing.T
	sh  *shared
	now int64
	id  uint64
}

func newSharedRig(t *testing.T, lim SharedLimits) *sharedRig {
	known := func(k string) bool { return !strings.HasPrefix(k, "gone") }
	return &sharedRig{t: t, sh: newShared(lim, known), now: 1_000_000_000}
}

// do sends m from client cl and returns the effects as lines.
func (r *sharedRig) do(cl ClientID, m *wire.Msg) []string {
	r.t.Helper()
	if m.ID == 0 && m.Op != wire.OpSemaphoreRefresh {
		r.id++
		m.ID = r.id
	}
	r.sh.handle(cl, m, r.now)
	return r.effects()
}

func (r *sharedRig) advance(d int64) []string {
	r.now += d
	r.sh.tick(r.now)
	return r.effects()
}

func (r *sharedRig) effects() []string {
	var out []string
	for _, e := range r.sh.take() {
		switch {
		case e.reply != nil:
			m := e.reply
			s := fmt.Sprintf("c%d %s #%d", e.client, m.Op, m.ID)
			if m.Op == wire.OpError {
				s += " " + m.Code + ": " + m.Message
			}
			if m.Accepted {
				s += " yes"
			}
			if m.N != 0 {
				s += fmt.Sprintf(" n=%d", m.N)
			}
			off := 0
			for _, it := range m.Items {
				if it.Encoding == EncFuture {
					s += " future:" + it.Key
				} else {
					s += fmt.Sprintf(" %s:%s", it.Encoding, m.Payload[off:off+int(it.NBytes)])
					off += int(it.NBytes)
				}
			}
			if len(m.Keys) > 0 {
				s += " keys=" + strings.Join(m.Keys, ",")
			}
			out = append(out, s)
		case len(e.want) > 0:
			out = append(out, fmt.Sprintf("c%d want %s", e.client, strings.Join(e.want, ",")))
		case len(e.release) > 0:
			out = append(out, fmt.Sprintf("c%d release %s", e.client, strings.Join(e.release, ",")))
		}
	}
	return out
}

func val(op, name, data string, holds ...string) *wire.Msg {
	return &wire.Msg{Op: op, Name: name, Items: []wire.Item{{Encoding: wire.EncMsgpack, NBytes: int64(len(data))}},
		Payload: []byte(data), Keys: holds}
}

func fut(op, name, key string) *wire.Msg {
	return &wire.Msg{Op: op, Name: name, Items: []wire.Item{{Key: key, Encoding: EncFuture}}}
}

func expect(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("effects:\n  got  %q\n  want %q", got, want)
	}
}

const sec = int64(1e9)

func TestSharedVariable(t *testing.T) {
	r := newSharedRig(t, DefaultSharedLimits())
	// a get before the first set waits; the set answers it and the getter wants the key
	expect(t, r.do(2, &wire.Msg{Op: wire.OpVariableGet, Name: "v", Timeout: -1}))
	expect(t, r.do(1, fut(wire.OpVariableSet, "v", "x")),
		"c0 want x", "c1 ok #2 yes", "c2 ok #1 yes future:x keys=x", "c2 want x")
	// replacing the value: the new key is held before the old one is released
	expect(t, r.do(1, val(wire.OpVariableSet, "v", "7", "y")), "c0 want y", "c0 release x", "c1 ok #3 yes")
	expect(t, r.do(3, &wire.Msg{Op: wire.OpVariableGet, Name: "v"}), "c3 ok #4 yes msgpack:7 keys=y", "c3 want y")
	expect(t, r.do(1, &wire.Msg{Op: wire.OpVariableDelete, Name: "v"}), "c0 release y", "c1 ok #5 yes")
	// a get with a timeout answers "not accepted" at its deadline
	expect(t, r.do(2, &wire.Msg{Op: wire.OpVariableGet, Name: "v", Timeout: 0.5}))
	expect(t, r.advance(sec/4))
	expect(t, r.advance(sec/4), "c2 ok #6")
	if st := r.sh.stats(); st != (SharedStats{}) {
		t.Fatalf("left behind: %+v", st)
	}
	// a value refers only to keys the scheduler knows
	expect(t, r.do(1, fut(wire.OpVariableSet, "v", "gone-1")),
		`c1 error #7 lost: variable_set "v": key "gone-1" is not known to the scheduler (every future of it was released)`)
}

func TestSharedQueue(t *testing.T) {
	r := newSharedRig(t, DefaultSharedLimits())
	expect(t, r.do(1, fut(wire.OpQueuePut, "q", "a")), "c0 want a", "c1 ok #1 yes")
	expect(t, r.do(1, val(wire.OpQueuePut, "q", "2")), "c1 ok #2 yes")
	expect(t, r.do(1, &wire.Msg{Op: wire.OpQueueSize, Name: "q"}), "c1 ok #3 n=2")
	// the getter wants the key before the queue lets go of it
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q", Timeout: -1}),
		"c2 ok #4 yes future:a keys=a", "c2 want a", "c0 release a")
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q", Timeout: -1}), "c2 ok #5 yes msgpack:2")
	// gets wait in order; a put answers the first
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q", Timeout: -1}))
	expect(t, r.do(3, &wire.Msg{Op: wire.OpQueueGet, Name: "q", Timeout: 1}))
	expect(t, r.do(1, val(wire.OpQueuePut, "q", "3")), "c1 ok #8 yes", "c2 ok #6 yes msgpack:3")
	expect(t, r.advance(sec), "c3 ok #7")
	// batch=True takes everything at once, and never waits
	for i := range 3 {
		r.do(1, val(wire.OpQueuePut, "q", fmt.Sprint(i)))
	}
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q", N: -1, Timeout: -1}), "c2 ok #12 yes msgpack:0 msgpack:1 msgpack:2")
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q", N: -1, Timeout: -1}), "c2 ok #13 yes")
	// batch=N waits for N items
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q", N: 2, Timeout: -1}))
	expect(t, r.do(1, val(wire.OpQueuePut, "q", "a")), "c1 ok #15 yes")
	expect(t, r.do(1, val(wire.OpQueuePut, "q", "b")), "c1 ok #16 yes", "c2 ok #14 yes msgpack:a msgpack:b")
	// a full queue parks puts (holding their keys) until a get makes room
	expect(t, r.do(1, val(wire.OpQueuePut, "m", "1")), "c1 ok #17 yes")
	m := fut(wire.OpQueuePut, "m", "k")
	m.N, m.Timeout = 1, -1
	expect(t, r.do(1, m), "c0 want k")
	m = val(wire.OpQueuePut, "m", "3")
	m.N = 1
	expect(t, r.do(1, m), "c1 ok #19") // full, and it would not wait
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "m"}), "c2 ok #20 yes msgpack:1", "c1 ok #18 yes")
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "m"}), "c2 ok #21 yes future:k keys=k", "c2 want k", "c0 release k")
	if st := r.sh.stats(); st != (SharedStats{}) {
		t.Fatalf("left behind: %+v", st)
	}
}

func TestSharedQueueLimits(t *testing.T) {
	lim := DefaultSharedLimits()
	lim.MaxQueueItems, lim.MaxValueBytes, lim.MaxReplyBytes, lim.MaxWaiters, lim.MaxObjects = 3, 4, 8, 1, 2
	r := newSharedRig(t, lim)
	expect(t, r.do(1, val(wire.OpQueuePut, "q", "12345")),
		`c1 error #1 limit-exceeded: queue_put "q": the value is 5 bytes, over the limit of 4 bytes for shared state: scatter it and store the future instead`)
	for range 3 {
		r.do(1, val(wire.OpQueuePut, "q", "1234"))
	}
	expect(t, r.do(1, val(wire.OpQueuePut, "q", "x")),
		`c1 error #5 limit-exceeded: queue_put "q": the queue holds 3 items, the limit per queue`)
	// a batch reply stops at MaxReplyBytes
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q", N: -1}), "c2 ok #6 yes msgpack:1234 msgpack:1234")
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q"}), "c2 ok #7 yes msgpack:1234")
	expect(t, r.do(2, &wire.Msg{Op: wire.OpQueueGet, Name: "q", Timeout: -1}))
	expect(t, r.do(3, &wire.Msg{Op: wire.OpQueueGet, Name: "q", Timeout: -1}),
		`c3 error #9 limit-exceeded: queue_get "q": 1 requests already wait on it, the limit`)
	expect(t, r.do(3, &wire.Msg{Op: wire.OpEventSet, Name: "e"}), "c3 ok #10 yes")
	expect(t, r.do(3, &wire.Msg{Op: wire.OpEventSet, Name: "f"}),
		`c3 error #11 limit-exceeded: event_set "f": the scheduler already holds 2 shared objects (variables, queues, semaphores, events and datasets), the limit`)
	// the parked getter goes with its client
	r.sh.clientLeft(2, r.now)
	expect(t, r.effects())
	if st := r.sh.stats(); st.Queues != 0 || st.Waiters != 0 {
		t.Fatalf("left behind: %+v", st)
	}
}

func TestSharedSemaphore(t *testing.T) {
	r := newSharedRig(t, DefaultSharedLimits())
	acq := func(lease string, timeout float64) *wire.Msg {
		return &wire.Msg{Op: wire.OpSemaphoreAcquire, Name: "s", Key: lease, N: 2, Timeout: timeout, LeaseTimeout: 10}
	}
	expect(t, r.do(1, acq("l1", -1)), "c1 ok #1 yes")
	expect(t, r.do(2, acq("l2", -1)), "c2 ok #2 yes")
	expect(t, r.do(3, acq("l3", 0)), "c3 ok #3")
	expect(t, r.do(3, acq("l3", -1)))
	expect(t, r.do(3, &wire.Msg{Op: wire.OpSemaphoreValue, Name: "s"}), "c3 ok #5 n=2")
	// a release hands the lease to the first waiter; releasing again is refused
	expect(t, r.do(1, &wire.Msg{Op: wire.OpSemaphoreRelease, Name: "s", Key: "l1"}), "c1 ok #6 yes", "c3 ok #4 yes")
	expect(t, r.do(1, &wire.Msg{Op: wire.OpSemaphoreRelease, Name: "s", Key: "l1"}), "c1 ok #7")
	// a closed connection frees its leases at once
	expect(t, r.do(4, acq("l4", -1)))
	r.sh.clientLeft(2, r.now)
	expect(t, r.effects(), "c4 ok #8 yes")
	// a lease not refreshed within its lease timeout expires; a refreshed one does not
	expect(t, r.do(5, acq("l5", -1)))
	expect(t, r.advance(6*sec))
	expect(t, r.do(3, &wire.Msg{Op: wire.OpSemaphoreRefresh, Name: "s", Keys: []string{"l3"}}))
	expect(t, r.advance(5*sec), "c5 ok #9 yes")
	expect(t, r.do(3, &wire.Msg{Op: wire.OpSemaphoreValue, Name: "s"}), "c3 ok #10 n=2")
	// another client cannot release a lease it does not hold
	expect(t, r.do(1, &wire.Msg{Op: wire.OpSemaphoreRelease, Name: "s", Key: "l3"}), "c1 ok #11")
	expect(t, r.advance(20*sec))
	if st := r.sh.stats(); st != (SharedStats{}) {
		t.Fatalf("left behind: %+v", st)
	}
}

func TestSharedEvent(t *testing.T) {
	r := newSharedRig(t, DefaultSharedLimits())
	expect(t, r.do(1, &wire.Msg{Op: wire.OpEventWait, Name: "e"}), "c1 ok #1")
	expect(t, r.do(1, &wire.Msg{Op: wire.OpEventWait, Name: "e", Timeout: -1}))
	expect(t, r.do(2, &wire.Msg{Op: wire.OpEventWait, Name: "e", Timeout: 1}))
	expect(t, r.do(3, &wire.Msg{Op: wire.OpEventSet, Name: "e"}), "c3 ok #4 yes", "c1 ok #2 yes", "c2 ok #3 yes")
	expect(t, r.do(1, &wire.Msg{Op: wire.OpEventWait, Name: "e", Timeout: -1}), "c1 ok #5 yes")
	expect(t, r.do(1, &wire.Msg{Op: wire.OpEventClear, Name: "e"}), "c1 ok #6 yes")
	expect(t, r.do(1, &wire.Msg{Op: wire.OpEventWait, Name: "e", Timeout: 2}))
	expect(t, r.advance(2*sec), "c1 ok #7")
	if st := r.sh.stats(); st != (SharedStats{}) {
		t.Fatalf("left behind: %+v", st)
	}
}

func TestSharedDatasets(t *testing.T) {
	r := newSharedRig(t, DefaultSharedLimits())
	expect(t, r.do(1, fut(wire.OpPublish, "b", "x")), "c0 want x", "c1 ok #1 yes")
	expect(t, r.do(1, val(wire.OpPublish, "a", "p", "y", "x")), "c0 want y", "c1 ok #2 yes")
	expect(t, r.do(2, fut(wire.OpPublish, "a", "z")), "c2 ok #3") // exists, no override
	m := fut(wire.OpPublish, "a", "z")
	m.Accepted = true
	expect(t, r.do(2, m), "c0 want z", "c0 release y", "c2 ok #4 yes")
	expect(t, r.do(2, &wire.Msg{Op: wire.OpListDatasets}), "c2 ok #5 keys=a,b")
	expect(t, r.do(3, &wire.Msg{Op: wire.OpGetDataset, Name: "b"}), "c3 ok #6 yes future:x keys=x", "c3 want x")
	expect(t, r.do(3, &wire.Msg{Op: wire.OpGetDataset, Name: "c"}), "c3 ok #7")
	expect(t, r.do(3, &wire.Msg{Op: wire.OpUnpublish, Name: "b"}), "c0 release x", "c3 ok #8 yes")
	expect(t, r.do(3, &wire.Msg{Op: wire.OpUnpublish, Name: "b"}), "c3 ok #9")
	r.sh.restarted()
	expect(t, r.do(3, &wire.Msg{Op: wire.OpUnpublish, Name: "a"}), "c3 ok #10 yes") // its hold went with the restart
}

func TestSharedRefusesBadRequests(t *testing.T) {
	r := newSharedRig(t, DefaultSharedLimits())
	expect(t, r.do(1, &wire.Msg{Op: wire.OpVariableGet}), `c1 error #1 protocol-error: variable_get: name is empty`)
	expect(t, r.do(1, &wire.Msg{Op: wire.OpQueuePut, Name: "q"}),
		`c1 error #2 protocol-error: queue_put "q": expected one item describing the value, got 0`)
	expect(t, r.do(1, &wire.Msg{Op: wire.OpSemaphoreAcquire, Name: "s", Key: "l", N: 0}),
		`c1 error #3 limit-exceeded: semaphore_acquire "s": max_leases 0 is outside 1…1048576`)
	m := val(wire.OpVariableSet, "v", "x")
	m.Items[0].Encoding = "arrow"
	expect(t, r.do(1, m), `c1 error #4 protocol-error: variable_set "v": encoding "arrow" is not future, msgpack or pickle`)
}
