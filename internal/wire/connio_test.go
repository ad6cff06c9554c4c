package wire

import (
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/graph"
)

// countingConn counts the deadlines set on it.
type countingConn struct {
	net.Conn
	reads, writes int
}

func (c *countingConn) SetReadDeadline(t time.Time) error {
	c.reads++
	return c.Conn.SetReadDeadline(t)
}

func (c *countingConn) SetWriteDeadline(t time.Time) error {
	c.writes++
	return c.Conn.SetWriteDeadline(t)
}

// Reads that follow each other keep the deadline already set, and a kept deadline that comes
// before a read's whole span does not end that read early.
func TestLazyReadDeadline(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	cc := &countingConn{Conn: a}
	const span = 400 * time.Millisecond
	tr := timedReader{nc: cc, inMsg: span}
	go func() {
		for range 20 {
			b.Write([]byte{1})
		}
	}()
	buf := make([]byte, 1)
	for range 20 {
		n, err := tr.Read(buf)
		require.NoError(t, err)
		require.Equal(t, 1, n)
	}
	require.Less(t, cc.reads, 5, "20 quick reads should move the deadline about once")

	// the deadline kept now is up to a quarter span short of a new read's due: wait into that
	// quarter, so that the next read keeps it, and check the read still waits its whole span
	time.Sleep(span / 8)
	before := cc.reads
	start := time.Now()
	_, err := tr.Read(buf)
	waited := time.Since(start)
	require.True(t, isTimeout(err), "want a timeout, got %v", err)
	require.GreaterOrEqual(t, waited, span, "a read timed out before its span")
	require.Equal(t, before+1, cc.reads, "the early deadline is moved once, to the read's due")

	// a longer span than the one kept (the idle timeout after a message) moves it; none clears it
	tr.waiting, tr.idle = true, time.Hour
	tr.dl.arm(cc, tr.idle)
	require.WithinDuration(t, time.Now().Add(time.Hour), tr.dl.at, time.Minute)
	tr.dl.arm(cc, 0)
	require.True(t, tr.dl.at.IsZero())
}

// tcpPair is a connected pair of loopback TCP connections with small socket buffers, so that
// a writer blocks soon when its peer does not read.
func tcpPair(t *testing.T, buf int) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan net.Conn, 1)
	go func() {
		nc, _ := ln.Accept()
		done <- nc
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	b := <-done
	require.NotNil(t, b)
	t.Cleanup(func() { a.Close(); b.Close() })
	ac, bc := a.(*net.TCPConn), b.(*net.TCPConn)
	require.NoError(t, ac.SetWriteBuffer(buf))
	require.NoError(t, bc.SetReadBuffer(buf))
	return ac, bc
}

// A connection whose peer stops reading is dropped after the stall timeout, not before: the
// writer's batches go out in one writev each, under a deadline it keeps lazily.
func TestWriteStallDropsNonReader(t *testing.T) {
	a, _ := tcpPair(t, 8<<10) // the peer never reads
	c := newConn(a, DefaultLimits(), RoleClient)
	require.NotNil(t, c.raw)
	const stall = 300 * time.Millisecond
	c.setTimeouts(0, stall)
	defer c.Abort()
	filler := string(make([]byte, 32<<10))
	start := time.Now()
	var sendErr error
	for time.Since(start) < 8*time.Second {
		if sendErr = c.Send(&Msg{Op: OpHeartbeat, Message: filler}); sendErr != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	require.Error(t, sendErr, "a peer that reads nothing was not dropped")
	require.True(t, errors.Is(sendErr, ErrStalled), "want ErrStalled, got %v", sendErr)
	require.GreaterOrEqual(t, time.Since(start), stall)
}

// A write deadline kept from an earlier batch fires before a later batch's own span is over:
// the write goes on, so a peer that pauses for less than the stall timeout is not dropped.
func TestWriteStallKeptDeadlineFiresEarly(t *testing.T) {
	a, b := tcpPair(t, 64<<10)
	c := newConn(a, DefaultLimits(), RoleClient)
	const stall = 2 * time.Second
	c.setTimeouts(0, stall)
	defer c.Abort()
	r := newConn(b, DefaultLimits(), RoleClient)
	t0 := time.Now()
	require.NoError(t, c.Send(&Msg{Op: OpHeartbeat, ID: 1})) // the writer sets t0+2s
	m, _, err := r.Recv()
	require.NoError(t, err)
	require.Equal(t, uint64(1), m.ID)

	// 400 ms later a big batch keeps that deadline (it is less than a quarter span short of
	// its own, t0+2.4s) and blocks, as the peer pauses until t0+2.2s
	time.Sleep(400 * time.Millisecond)
	big := string(make([]byte, 3<<20)) // more than the sockets hold, less than a stallChunk
	require.NoError(t, c.Send(&Msg{Op: OpHeartbeat, ID: 2, Message: big}))
	time.Sleep(time.Until(t0.Add(2200 * time.Millisecond)))
	m, _, err = r.Recv()
	require.NoError(t, err, "the batch was dropped when the kept deadline fired")
	require.Equal(t, uint64(2), m.ID)
	require.NoError(t, c.Send(&Msg{Op: OpHeartbeat, ID: 3}))
	m, _, err = r.Recv()
	require.NoError(t, err)
	require.Equal(t, uint64(3), m.ID)
}

// FlushNow after the writer goroutine's deadline has passed (the connection idle for longer
// than the stall timeout): the descriptor refuses the write, which is then the writer's, and
// the connection lives on.
func TestFlushNowAfterStaleWriteDeadline(t *testing.T) {
	a, b := tcpPair(t, 8<<10)
	c := newConn(a, DefaultLimits(), RoleClient)
	c.setTimeouts(0, 150*time.Millisecond)
	defer c.Abort()
	r := newConn(b, DefaultLimits(), RoleClient)
	require.NoError(t, c.Send(&Msg{Op: OpHeartbeat, ID: 1})) // the writer goroutine sets a deadline
	_, _, err := r.Recv()
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond)
	for id := uint64(2); id <= 3; id++ {
		require.NoError(t, c.Queue(&Msg{Op: OpHeartbeat, ID: id}))
		c.FlushNow()
		m, _, err := r.Recv()
		require.NoError(t, err)
		require.Equal(t, id, m.ID)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	require.NoError(t, c.mu.err)
}

// What a partial FlushNow puts back goes before what was queued meanwhile, file frames
// included: their places move with it.
func TestRequeueFrontMovesFilePlaces(t *testing.T) {
	a, _ := tcpPair(t, 8<<10)
	c := newConn(a, DefaultLimits(), RoleClient)
	defer c.Abort()
	f, err := os.CreateTemp(t.TempDir(), "frame")
	require.NoError(t, err)
	_, err = f.WriteString("0123")
	require.NoError(t, err)
	c.mu.Lock()
	c.mu.writer = true // as while FlushNow writes: nothing is written meanwhile
	c.mu.Unlock()
	require.NoError(t, c.enqueueFrames([]byte("hdr"), []Frame{{File: f, Off: 0, Len: 4}}))
	c.mu.Lock()
	at := c.mu.files[0].at
	require.Nil(t, c.mu.bufs[at], "a file frame's place is an empty buffer")
	rest := [][]byte{[]byte("abc"), []byte("de")}
	c.requeueFrontLocked(rest, nil, 5)
	require.Equal(t, at+2, c.mu.files[0].at)
	require.Nil(t, c.mu.bufs[c.mu.files[0].at])
	require.Equal(t, []byte("abc"), c.mu.bufs[0])
	c.mu.writer = false
	c.mu.Unlock()
}

// FlushNow writes from its caller while the socket takes the bytes, hands the rest to a
// writer goroutine when it fills, and every message arrives once, in order, either way.
func TestFlushNowKeepsOrderThroughFullSocket(t *testing.T) {
	nc, pc := tcpPair(t, 128<<10) // the first flush (24 KiB) fits, the whole stream does not
	c := newConn(nc, DefaultLimits(), RoleClient)
	defer c.Abort()
	require.NotNil(t, c.raw, "a TCP connection can be written inline")
	r := newConn(pc, DefaultLimits(), RoleClient)

	filler := string(make([]byte, 8<<10))
	const n = 3000 // ~24 MB: far more than the socket buffers hold while nobody reads
	inlineAll, sawWriter, firstInline := true, false, false
	for i := range n {
		require.NoError(t, c.Queue(&Msg{Op: OpHeartbeat, ID: uint64(i + 1), Message: filler}))
		if i%3 == 2 || i == n-1 {
			c.FlushNow()
			c.mu.Lock()
			if c.mu.writer {
				sawWriter = true
			}
			if len(c.mu.bufs) > 0 || c.mu.writer {
				inlineAll = false
			} else if i == 2 {
				firstInline = true
			}
			c.mu.Unlock()
		}
	}
	require.True(t, firstInline, "the first flush, into an empty socket, was not written inline")
	require.True(t, sawWriter, "the full socket never handed the rest to a writer goroutine")
	require.False(t, inlineAll)
	for i := range n {
		m, _, err := r.Recv()
		require.NoError(t, err)
		require.Equal(t, uint64(i+1), m.ID, "message %d out of order", i)
		require.Len(t, m.Message, len(filler))
	}
}

// QueueFirst reports the first message queued since the output was last taken; a driver
// that flushes a connection only in the passes it was first for in loses nothing, also while
// the socket is full and a writer goroutine holds the output (the scheduler's flush).
func TestQueueFirstFlushesEverything(t *testing.T) {
	nc, pc := tcpPair(t, 128<<10)
	c := newConn(nc, DefaultLimits(), RoleClient)
	defer c.Abort()
	r := newConn(pc, DefaultLimits(), RoleClient)

	first, err := c.QueueFirst(&Msg{Op: OpHeartbeat, ID: 1})
	require.NoError(t, err)
	require.True(t, first, "nothing was pending")
	first, err = c.QueueFirst(&Msg{Op: OpHeartbeat, ID: 2})
	require.NoError(t, err)
	require.False(t, first, "a message was pending")
	c.FlushNow() // an empty socket: written inline
	first, err = c.QueueFirst(&Msg{Op: OpHeartbeat, ID: 3})
	require.NoError(t, err)
	require.True(t, first, "the output was taken by a write")
	c.FlushNow()

	filler := string(make([]byte, 4<<10))
	const n = 6000 // ~24 MB: the socket fills while the reader sleeps, and writers take over
	got := make(chan error, 1)
	go func() {
		for i := range n + 3 {
			if i%500 == 0 {
				time.Sleep(20 * time.Millisecond)
			}
			m, _, err := r.Recv()
			if err == nil && m.ID != uint64(i+1) {
				err = fmt.Errorf("message %d has ID %d", i+1, m.ID)
			}
			if err != nil {
				got <- err
				return
			}
		}
		got <- nil
	}()
	rng := rand.New(rand.NewSource(1))
	firsts := 0
	for i := 3; i < n+3; {
		due := false
		for k := 1 + rng.Intn(20); k > 0 && i < n+3; k-- {
			i++
			f, err := c.QueueFirst(&Msg{Op: OpHeartbeat, ID: uint64(i), Message: filler})
			require.NoError(t, err)
			due = due || f
		}
		if due {
			firsts++
			c.FlushNow()
		}
	}
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("messages queued in passes that were not first were never written")
	}
	require.Positive(t, firsts)
}

// A connection's next small-message slice is as large as its last one's contents: a burst
// that outgrew 4 KiB gets room for the same the next time (no growing by append, a copy),
// and one small message after it brings the size back down.
func TestSmallSliceFitsLastBurst(t *testing.T) {
	nc, pc := tcpPair(t, 1<<20)
	c := newConn(nc, DefaultLimits(), RoleClient)
	defer c.Abort()
	r := newConn(pc, DefaultLimits(), RoleClient)
	filler := string(make([]byte, 200))
	burst := func(n int) int { // queues n messages, writes them: the slice's first capacity
		t.Helper()
		capacity := 0
		for i := range n {
			require.NoError(t, c.Queue(&Msg{Op: OpHeartbeat, ID: uint64(i + 1), Message: filler}))
			if i == 0 { // (before any growing by append)
				c.mu.Lock()
				capacity = cap(c.mu.small)
				c.mu.Unlock()
			}
		}
		c.FlushNow()
		for range n {
			_, _, err := r.Recv()
			require.NoError(t, err)
		}
		return capacity
	}
	burst(40) // ~9 KB: grows past the first 4 KiB slice
	require.GreaterOrEqual(t, burst(40), 8<<10, "the second burst's slice had no room for the first's")
	burst(1)
	require.Less(t, burst(1), 8<<10, "one small message after a burst still gets a burst's slice")
}

// A message that cannot be encoded leaves nothing queued, not even an empty slice: the
// connection has no output pending (an idle timeout still applies), and the next message is
// the first.
func TestFailedEncodeLeavesNothingPending(t *testing.T) {
	cc, _ := connPair(t, "", RoleClient)
	bad := &Msg{Op: OpCompute, Task: &graph.Task{Key: "k", Args: []graph.Arg{{Val: make(chan int)}}}}
	first, err := cc.QueueFirst(bad)
	require.Error(t, err)
	require.False(t, first)
	require.False(t, cc.outputPending(), "a failed encode left output pending")
	first, err = cc.QueueFirst(&Msg{Op: OpHeartbeat})
	require.NoError(t, err)
	require.True(t, first, "the first message after a failed one is not the first")
	_, err = cc.QueueFirst(bad) // behind a pending message: that one stays
	require.Error(t, err)
	require.True(t, cc.outputPending())
}
