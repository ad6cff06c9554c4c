package wire

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// parkingReader reads a connection as the scheduler's worker reader does: it parks the
// connection whenever it has read all its peer sent, and goes on when resumed.
type parkingReader struct {
	t       *testing.T
	c       *Conn
	p       *Poller
	got     chan string   // each message's key, in order
	ended   chan error    // the error the reading ended with
	inside  *atomic.Int32 // readers running for this connection now (must stay ≤ 1)
	parks   atomic.Int64  // times it parked
	resumes atomic.Int64  // times it was resumed
	held    atomic.Int64  // times it was resumed holding a read buffer (Park gives it back)
}

func newParkingReader(t *testing.T, c *Conn, p *Poller) *parkingReader {
	return &parkingReader{t: t, c: c, p: p, got: make(chan string, 100_000), ended: make(chan error, 1), inside: new(atomic.Int32)}
}

func (r *parkingReader) resume() {
	r.resumes.Add(1)
	if n := r.inside.Add(1); n != 1 {
		r.t.Errorf("%d readers at once on one connection", n)
	}
	if r.c.br.buf != nil || r.c.br.small != nil || r.c.br.big != nil {
		r.held.Add(1)
	}
	r.c.TryFill()
	r.inside.Add(-1)
	go r.run() // (it may wait in Recv: not on the poller's goroutine)
}

func (r *parkingReader) run() {
	if n := r.inside.Add(1); n != 1 {
		r.t.Errorf("%d readers at once on one connection", n)
	}
	defer r.inside.Add(-1)
	for {
		if r.c.Drained() {
			parked, err := r.c.Park(r.p, r.resume)
			if err != nil {
				r.ended <- err
				return
			}
			if parked {
				r.parks.Add(1)
				return
			}
			if !r.c.TryFill() && r.c.Drained() {
				continue
			}
		}
		m, _, err := r.c.Recv()
		if err != nil {
			r.c.Unpoll()
			r.ended <- err
			return
		}
		r.got <- m.Key
	}
}

// encodedMsg is a heartbeat with key k as it goes on the wire.
func encodedMsg(t *testing.T, k string) []byte {
	hdr, err := EncodeHeader(&Msg{Op: OpHeartbeat, Key: k})
	require.NoError(t, err)
	return append(frameHeader([][]byte{hdr}), hdr...)
}

// parkedPair is connPair with a parkingReader on the server's side that read a first message
// and parked.
func parkedPair(t *testing.T, p *Poller) (client, server *Conn, r *parkingReader) {
	t.Helper()
	client, server = connPair(t, "", RoleWorker)
	r = newParkingReader(t, server, p)
	go r.run()
	require.NoError(t, client.Send(&Msg{Op: OpHeartbeat, Key: "a"}))
	require.Equal(t, "a", <-r.got)
	require.Eventually(t, func() bool { return r.parks.Load() > 0 && r.inside.Load() == 0 }, 5*time.Second, time.Millisecond)
	return client, server, r
}

// end waits for the reading to end and returns its error; it fails the test if that takes
// long (the reader never saw what), or a message comes first.
func (r *parkingReader) end(t *testing.T, what string) error {
	t.Helper()
	select {
	case err := <-r.ended:
		return err
	case k := <-r.got:
		t.Fatalf("message %q instead of the end", k)
	case <-time.After(5 * time.Second):
		t.Fatalf("the parked reader never saw %s", what)
	}
	return nil
}

func newTestPoller(t *testing.T) *Poller {
	p, err := NewPoller(nil)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// Messages sent in bursts with pauses between them all arrive, in order, while the reader
// parks between bursts (so that no goroutine waits on the idle connection) and never runs
// twice at once.
func TestPollerResumesParkedReaders(t *testing.T) {
	p := newTestPoller(t)
	const conns, bursts = 50, 20
	type pair struct {
		cc *Conn
		r  *parkingReader
	}
	pairs := make([]pair, conns)
	for i := range pairs {
		cc, sc := connPair(t, "", RoleWorker)
		r := newParkingReader(t, sc, p)
		go r.run()
		pairs[i] = pair{cc, r}
	}
	var wg sync.WaitGroup
	for i, pr := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			n := 0
			for b := range bursts {
				if b%2 == 0 { // half the bursts find the reader parked, half may find it running
					deadline := time.Now().Add(5 * time.Second)
					for (pr.r.inside.Load() != 0 || pr.r.parks.Load() == 0) && time.Now().Before(deadline) {
						time.Sleep(100 * time.Microsecond)
					}
				}
				for range 1 + rng.IntN(30) {
					pr.cc.Send(&Msg{Op: OpHeartbeat, Key: fmt.Sprint(n)})
					n++
				}
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
			}
			pr.cc.Send(&Msg{Op: OpHeartbeat, Key: "end"})
		}()
	}
	wg.Wait()
	for i, pr := range pairs {
		for n := 0; ; n++ {
			select {
			case k := <-pr.r.got:
				if k == "end" {
					goto next
				}
				require.Equal(t, fmt.Sprint(n), k, "connection %d: messages out of order or lost", i)
			case err := <-pr.r.ended:
				t.Fatalf("connection %d ended: %v", i, err)
			case <-time.After(10 * time.Second):
				t.Fatalf("connection %d: message %d never came (a lost wake-up)", i, n)
			}
		}
	next:
		require.Positive(t, pr.r.parks.Load(), "connection %d never parked", i)
		require.Positive(t, pr.r.resumes.Load(), "connection %d was never resumed", i)
		require.Zero(t, pr.r.held.Load(), "connection %d was parked holding a read buffer", i)
	}
}

// A parked connection closed on this side (the scheduler dropping a worker, or stopping)
// resumes its reader, which sees the end: a closed descriptor leaves the epoll set without an
// edge of its own.
func TestPollerResumesOnLocalClose(t *testing.T) {
	p := newTestPoller(t)
	for _, how := range []string{"Abort", "Close"} {
		t.Run(how, func(t *testing.T) {
			_, sc, r := parkedPair(t, p)
			if how == "Abort" {
				sc.Abort()
			} else {
				sc.Close()
			}
			require.ErrorIs(t, r.end(t, "its connection closed"), net.ErrClosed)
		})
	}
}

// A peer that hangs up on a parked connection resumes its reader with the end of the stream.
func TestPollerResumesOnPeerClose(t *testing.T) {
	p := newTestPoller(t)
	cc, _, r := parkedPair(t, p)
	cc.Close()
	require.Error(t, r.end(t, "its peer hang up"))
}

// A message split across writes, with a pause in the middle, is read to its end by the
// running reader (under the message timeout): the connection is parked only at a message
// boundary with nothing buffered.
func TestPollerReadsSplitMessageWithoutParking(t *testing.T) {
	p := newTestPoller(t)
	cc, sc := connPair(t, "", RoleWorker)
	nc := cc.nc // the peer's socket, to write a message's bytes by hand
	sc.setTimeouts(0, 5*time.Second)
	r := newParkingReader(t, sc, p)
	go r.run()

	whole := append(encodedMsg(t, "first"), encodedMsg(t, "second")...)
	cut := len(whole) - 5 // inside the second message
	_, err := nc.Write(whole[:cut])
	require.NoError(t, err)
	require.Equal(t, "first", <-r.got)
	time.Sleep(50 * time.Millisecond)
	require.Zero(t, r.parks.Load(), "parked with half a message buffered")
	_, err = nc.Write(whole[cut:])
	require.NoError(t, err)
	select {
	case k := <-r.got:
		require.Equal(t, "second", k)
	case <-time.After(5 * time.Second):
		t.Fatal("the second message never came")
	}
}

// Only plain TCP connections can be parked.
func TestPollerRefusesWhatItCannotWatch(t *testing.T) {
	p := newTestPoller(t)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newConn(b, DefaultLimits(), RoleWorker)
	require.False(t, c.Pollable())
	_, err := c.Park(p, func() {})
	require.True(t, errors.Is(err, errNotPollable), "got %v", err)
}

// A message whose bytes came in two reads sets the message timeout's deadline; the connection
// then parks, and a message sent after that deadline has passed is read, not taken for a
// stalled one.
func TestPollerParkedConnectionOutlivesMessageDeadline(t *testing.T) {
	p := newTestPoller(t)
	cc, sc := connPair(t, "", RoleWorker)
	nc := cc.nc // the peer's socket, to write a message's bytes by hand
	const timeout = 100 * time.Millisecond
	sc.setTimeouts(0, timeout)
	r := newParkingReader(t, sc, p)
	go r.run()

	first := encodedMsg(t, "first")
	_, err := nc.Write(first[:3])
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond) // the reader reads the start, and waits for the rest under the deadline
	_, err = nc.Write(first[3:])
	require.NoError(t, err)
	require.Equal(t, "first", <-r.got)
	require.Eventually(t, func() bool { return r.parks.Load() > 0 && r.inside.Load() == 0 }, 5*time.Second, time.Millisecond)
	time.Sleep(3 * timeout)
	_, err = nc.Write(encodedMsg(t, "second"))
	require.NoError(t, err)
	select {
	case k := <-r.got:
		require.Equal(t, "second", k)
	case err := <-r.ended:
		t.Fatalf("the parked connection ended instead: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the second message never came")
	}
}

// A peer that sends its last message and hangs up at once may have both taken by one short
// read; no edge follows the end, so the reader must not park after it but read on to the end.
func TestPollerSeesHangUpBehindLastMessage(t *testing.T) {
	p := newTestPoller(t)
	for i := range 50 {
		cc, _, r := parkedPair(t, p)
		require.NoError(t, cc.Send(&Msg{Op: OpHeartbeat, Key: "last"}))
		cc.Close() // the message and the end leave together
		select {
		case k := <-r.got:
			require.Equal(t, "last", k)
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the last message never came", i)
		}
		require.Error(t, r.end(t, fmt.Sprintf("the end (round %d): it parked after the last message", i)))
	}
}

// A poller whose set fails resumes every parked connection, and none parks again: a
// connection already in the set is refused too, so that its reader waits in read instead of
// in a set nobody waits on.
func TestPollerFailedParksNothing(t *testing.T) {
	p := newTestPoller(t)
	_, _, r := parkedPair(t, p)
	p.fail(errors.New("test: the set failed"))
	require.ErrorIs(t, r.end(t, "the poller fail"), errPollerBroken)
}

// A parked connection holds no read buffer (at 10,000 idle workers, one each was 80 MB that
// the reads found cold); its next read takes one from the pool and reads as before.
func TestPollerParkedConnectionHoldsNoBuffer(t *testing.T) {
	p := newTestPoller(t)
	client, _, r := parkedPair(t, p)
	for i := range 3 {
		parks := r.parks.Load()
		require.NoError(t, client.Send(&Msg{Op: OpHeartbeat, Key: fmt.Sprint(i)}))
		require.Equal(t, fmt.Sprint(i), <-r.got)
		require.Eventually(t, func() bool { return r.parks.Load() > parks && r.inside.Load() == 0 }, 5*time.Second, time.Millisecond)
	}
	require.Equal(t, int64(3), r.resumes.Load())
	require.Zero(t, r.held.Load(), "resumed holding a read buffer")
}
