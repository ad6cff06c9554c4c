package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"testing/iotest"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/stretchr/testify/require"
)

func TestFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := [][]byte{[]byte("hdr"), {}, bytes.Repeat([]byte{7}, 100000)}
	require.NoError(t, WriteFrames(&buf, in))
	out, err := ReadFrames(&buf, DefaultLimits())
	require.NoError(t, err)
	require.Equal(t, len(in), len(out))
	for i := range in {
		require.True(t, bytes.Equal(in[i], out[i]), "frame %d", i)
	}
}

func TestFramesLimits(t *testing.T) {
	lim := Limits{MaxFrames: 4, MaxFrame: 100, MaxHeader: 10, MaxMessage: 150}
	cases := map[string][][]byte{
		"header too big":  {make([]byte, 11)},
		"frame too big":   {[]byte("h"), make([]byte, 101)},
		"message too big": {[]byte("h"), make([]byte, 100), make([]byte, 100)},
	}
	for name, frames := range cases {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, WriteFrames(&buf, frames))
			_, err := ReadFrames(&buf, lim)
			require.ErrorIs(t, err, ErrFrameTooLarge)
		})
	}
	// a huge declared length must be refused before allocating
	b := binary.BigEndian.AppendUint32(nil, 1)
	b = binary.BigEndian.AppendUint64(b, 1<<62)
	_, err := ReadFrames(bytes.NewReader(b), DefaultLimits())
	require.ErrorIs(t, err, ErrFrameTooLarge)
	// zero frames and too many frames are protocol errors
	_, err = ReadFrames(bytes.NewReader([]byte{0, 0, 0, 0}), DefaultLimits())
	require.ErrorIs(t, err, ErrProtocol)
	_, err = ReadFrames(bytes.NewReader([]byte{0, 0, 0, 5}), lim)
	require.ErrorIs(t, err, ErrProtocol)
	// truncated input
	_, err = ReadFrames(bytes.NewReader(b[:6]), DefaultLimits())
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

func TestHeaderRoundTrip(t *testing.T) {
	m := &Msg{Op: OpUpdateGraph, ID: 9, Tasks: []graph.Task{{Key: "a", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(1), graph.Ref("b")}}}}
	b, err := EncodeHeader(m)
	require.NoError(t, err)
	got, err := DecodeHeader(b)
	require.NoError(t, err)
	require.Equal(t, "a", got.Tasks[0].Key)
	require.Equal(t, "b", got.Tasks[0].Args[1].Ref)
	require.EqualValues(t, 1, got.Tasks[0].Args[0].Val)
	_, err = DecodeHeader([]byte{0xc0})
	require.ErrorIs(t, err, ErrProtocol)
	_, err = DecodeHeader([]byte("garbage"))
	require.ErrorIs(t, err, ErrProtocol)
}

// pipePair returns a handshaken client/server pair over a real loopback socket.
func pipePair(t testing.TB, serverToken, clientToken string, role Role) (*Conn, *Conn, error, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	type res struct {
		c   *Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		c, err := Accept(nc, serverToken, Limits{}, RoleClient, RoleWorker)
		ch <- res{c, err}
	}()
	cc, cerr := Dial(context.Background(), ln.Addr().String(), DialOptions{Role: role, Token: clientToken})
	r := <-ch
	return cc, r.c, cerr, r.err
}

// connPair is pipePair with both sides' token and no error expected; both are closed when
// the test ends.
func connPair(t testing.TB, token string, role Role) (cc, sc *Conn) {
	t.Helper()
	cc, sc, cerr, serr := pipePair(t, token, token, role)
	require.NoError(t, cerr)
	require.NoError(t, serr)
	t.Cleanup(func() { cc.Close(); sc.Close() })
	return cc, sc
}

func TestHandshakeAndMessages(t *testing.T) {
	cc, sc := connPair(t, "secret", RoleClient)
	require.Equal(t, RoleClient, sc.PeerRole)
	big := bytes.Repeat([]byte{1, 2, 3}, 100000)
	for i := 0; i < 100; i++ {
		require.NoError(t, cc.Send(&Msg{Op: OpInfo, ID: uint64(i)}, []byte("small"), big))
	}
	for i := 0; i < 100; i++ {
		m, frames, err := sc.Recv()
		require.NoError(t, err)
		require.Equal(t, uint64(i), m.ID)
		require.Equal(t, "small", string(frames[0]))
		require.True(t, bytes.Equal(big, frames[1]))
	}
}

func TestHandshakeRefusals(t *testing.T) {
	var herr *HandshakeError
	_, _, cerr, _ := pipePair(t, "secret", "wrong", RoleClient)
	require.True(t, errors.As(cerr, &herr))
	require.Equal(t, CodeAuthFailed, herr.Code())
	require.Contains(t, herr.Message, "wrong token")

	_, _, cerr, _ = pipePair(t, "secret", "", RoleClient)
	require.True(t, errors.As(cerr, &herr))
	require.Contains(t, herr.Message, "requires a token")

	_, _, cerr, _ = pipePair(t, "", "", RolePeer)
	require.True(t, errors.As(cerr, &herr))
	require.Equal(t, CodeBadRole, herr.Code())
}

func TestHandshakeBadMagicAndVersion(t *testing.T) {
	for name, hello := range map[string][]byte{
		"magic":   []byte("GET / HTTP/1.1\r\n\r\n"),
		"version": {'S', 'H', 'O', 'L', 0, 99, 1, 0, 0},
	} {
		t.Run(name, func(t *testing.T) {
			a, b := net.Pipe()
			done := make(chan error, 1)
			go func() { _, err := Accept(b, "", Limits{}, RoleClient); done <- err }()
			go a.Write(hello)
			err := ReadAnswer(a)
			var herr *HandshakeError
			require.True(t, errors.As(err, &herr), "%v", err)
			if name == "magic" {
				require.Equal(t, CodeBadMagic, herr.Code())
			} else {
				require.Equal(t, CodeBadVersion, herr.Code())
				require.Contains(t, herr.Message, "version 99")
			}
			require.Error(t, <-done)
		})
	}
}

func BenchmarkEncodeHeader(b *testing.B) {
	m := &Msg{Op: OpTaskFinished, Key: "inc-0123456789abcdef", NBytes: 8, Encoding: EncMsgpack, Start: 1, Stop: 2}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := EncodeHeader(m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeHeader(b *testing.B) {
	buf, _ := EncodeHeader(&Msg{Op: OpTaskFinished, Key: "inc-0123456789abcdef", NBytes: 8, Encoding: EncMsgpack, Start: 1, Stop: 2})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeHeader(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkConnSmallMessages(b *testing.B) {
	cc, sc := connPair(b, "", RoleClient)
	m := &Msg{Op: OpTaskFinished, Key: "inc-0123456789abcdef", NBytes: 8}
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := 0; i < b.N; i++ {
			cc.Send(m)
		}
	}()
	for i := 0; i < b.N; i++ {
		if _, _, err := sc.Recv(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestArgZeroLiteralSurvives(t *testing.T) {
	m := &Msg{Op: OpCompute, Task: &graph.Task{Key: "k", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(0), graph.Lit(""), graph.Lit(false), graph.Ref("x"), graph.Lit(nil)}}}
	b, err := EncodeHeader(m)
	require.NoError(t, err)
	got, err := DecodeHeader(b)
	require.NoError(t, err)
	args := got.Task.Args
	require.Len(t, args, 5)
	require.EqualValues(t, 0, args[0].Val)
	require.Equal(t, "", args[1].Val)
	require.Equal(t, false, args[2].Val)
	require.Equal(t, "x", args[3].Ref)
	require.Nil(t, args[4].Val)
}

// ReadFramesTo reads payload frames into the caller's buffers, the header into its own, and
// checks the limits before asking for any buffer.
func TestReadFramesAlloc(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, WriteFrames(&buf, [][]byte{[]byte("hdr"), []byte("payload-1"), []byte("p2")}))
	var asked []int
	pool := make([]byte, 64)
	alloc := func(n int) []byte {
		asked = append(asked, n)
		b := pool[:n:n]
		pool = pool[n:]
		return b
	}
	frames, err := ReadFramesTo(bytes.NewReader(buf.Bytes()), DefaultLimits(), Dest{Alloc: alloc})
	require.NoError(t, err)
	require.Equal(t, []int{9, 2}, asked)
	require.Equal(t, [][]byte{[]byte("hdr"), []byte("payload-1"), []byte("p2")}, frames)

	lim := DefaultLimits()
	lim.MaxFrame = 4 // "payload-1" is over the limit: refused before any allocation
	asked = nil
	_, err = ReadFramesTo(bytes.NewReader(buf.Bytes()), lim, Dest{Alloc: alloc})
	require.ErrorIs(t, err, ErrFrameTooLarge)
	require.Empty(t, asked)
}

// chunkSink collects a frame's bytes in chunks of at most size bytes, failing after fail
// chunks when fail > 0.
type chunkSink struct {
	size, fail int
	buf        []byte
	got        []string
}

func (s *chunkSink) Buf() ([]byte, error) {
	if s.fail > 0 && len(s.got) == s.fail {
		return nil, errors.New("sink full")
	}
	s.buf = make([]byte, s.size)
	return s.buf, nil
}

func (s *chunkSink) Filled(n int) error {
	s.got = append(s.got, string(s.buf[:n]))
	return nil
}

func (s *chunkSink) Frame() []byte { return []byte{} }

// A frame a Sink takes arrives in the sink's chunks and is the sink's Frame; the other frames
// are read into memory; a message cut short and a sink's error are errors.
func TestReadFramesSink(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, WriteFrames(&buf, [][]byte{[]byte("hdr"), []byte("payload-1"), []byte("p2")}))
	sink := &chunkSink{size: 4}
	var asked []string
	dest := Dest{Sink: func(hdr []byte, i int, n int64) Sink {
		asked = append(asked, fmt.Sprintf("%s %d %d", hdr, i, n))
		if i == 1 {
			return sink
		}
		return nil
	}}
	frames, err := ReadFramesTo(bytes.NewReader(buf.Bytes()), DefaultLimits(), dest)
	require.NoError(t, err)
	require.Equal(t, []string{"hdr 1 9", "hdr 2 2"}, asked)
	require.Equal(t, [][]byte{[]byte("hdr"), {}, []byte("p2")}, frames)
	require.Equal(t, []string{"payl", "oad-", "1"}, sink.got)

	whole := buf.Bytes()
	sink = &chunkSink{size: 4}
	_, err = ReadFramesTo(bytes.NewReader(whole[:len(whole)-5]), DefaultLimits(), dest)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Equal(t, []string{"payl", "oa"}, sink.got, "the bytes that arrived, no more")

	sink = &chunkSink{size: 4, fail: 1}
	_, err = ReadFramesTo(bytes.NewReader(whole), DefaultLimits(), dest)
	require.ErrorContains(t, err, "sink full")
}

func TestResolveWildcard(t *testing.T) {
	from := &net.TCPAddr{IP: net.ParseIP("198.18.0.2"), Port: 5555}
	got, ok := ResolveWildcard("[::]:42683", from)
	require.True(t, ok)
	require.Equal(t, "198.18.0.2:42683", got)
	got, ok = ResolveWildcard("0.0.0.0:1", from)
	require.True(t, ok)
	require.Equal(t, "198.18.0.2:1", got)
	got, ok = ResolveWildcard("10.1.1.1:7", from)
	require.False(t, ok)
	require.Equal(t, "10.1.1.1:7", got)
}

func TestCheckDialable(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:80", "[::1]:8786", "host.example:1"} {
		require.NoError(t, CheckDialable(ok), ok)
	}
	for _, bad := range []string{"[::]:42683", "0.0.0.0:1", ":80", "127.0.0.1", "127.0.0.1:0", "h:x"} {
		require.Error(t, CheckDialable(bad), bad)
	}
}

// A frame's declared length is not allocated before its bytes arrive: a peer that declares a
// gigabyte and sends ten bytes costs kilobytes.
func TestDeclaredFrameIsNotAllocated(t *testing.T) {
	b := binary.BigEndian.AppendUint32(nil, 2)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, 1<<30)
	b = append(b, 0x80)
	b = append(b, make([]byte, 10)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadFrames(bytes.NewReader(b), DefaultLimits())
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20))
	// and a frame that does arrive is read whole across the growth steps
	payload := make([]byte, 3*growFrom+17)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	var buf bytes.Buffer
	require.NoError(t, WriteFrames(&buf, [][]byte{{0x80}, payload}))
	frames, err := ReadFrames(iotest.HalfReader(&buf), DefaultLimits())
	require.NoError(t, err)
	require.Equal(t, payload, frames[1])
}

// Headers larger than a connection's scratch buffer are read into pooled buffers that grow as
// their bytes arrive: a declared length still costs nothing until it arrives, and a buffer
// given back and taken again for a shorter header holds only that header's bytes.
func TestLargeHeadersFromPool(t *testing.T) {
	var s recvScratch
	b := binary.BigEndian.AppendUint32(nil, 1)
	b = binary.BigEndian.AppendUint64(b, 60<<20) // within MaxHeader; ten bytes follow
	b = append(b, make([]byte, 10)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := readFrames(bytes.NewReader(b), DefaultLimits(), &s, Dest{})
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20))
	require.Nil(t, s.big, "a header that did not arrive is not kept")

	for i, n := range []int{5<<20 + 3, 70_000, 3 << 20, growFrom + 1, 100_000} {
		hdr := make([]byte, n)
		for j := range hdr {
			hdr[j] = byte(j*31 + i)
		}
		var buf bytes.Buffer
		require.NoError(t, WriteFrames(&buf, [][]byte{hdr, []byte("p")}))
		frames, err := readFrames(iotest.HalfReader(&buf), DefaultLimits(), &s, Dest{})
		require.NoError(t, err)
		require.Len(t, frames[0], n)
		require.True(t, bytes.Equal(hdr, frames[0]), "header %d", i)
		require.Equal(t, "p", string(frames[1]))
		require.Equal(t, &frames[0][0], &s.big[0], "a large header is the scratch's to give back")
		s.release(true)
		require.Nil(t, s.big)
	}

	// a header of a size class given back before is read into that buffer: no new memory
	// (tried a few times: a collection in between may empty the pool)
	msg := func(n int) []byte {
		var buf bytes.Buffer
		require.NoError(t, WriteFrames(&buf, [][]byte{make([]byte, n)}))
		return buf.Bytes()
	}
	first, second := msg(3<<20), msg(3<<20-100)
	reused := false
	for range 3 {
		_, err := readFrames(bytes.NewReader(first), DefaultLimits(), &s, Dest{})
		require.NoError(t, err)
		s.release(true)
		runtime.ReadMemStats(&before)
		_, err = readFrames(bytes.NewReader(second), DefaultLimits(), &s, Dest{})
		runtime.ReadMemStats(&after)
		require.NoError(t, err)
		s.release(true)
		if after.TotalAlloc-before.TotalAlloc < 1<<20 {
			reused = true
			break
		}
	}
	require.True(t, reused, "a 3 MB header after another did not reuse its buffer")
}

// Large headers through a connection, one after another and of shrinking and growing sizes,
// decode as sent (the pooled buffer of one is given back before the next is read).
func TestLargeHeadersThroughConn(t *testing.T) {
	cc, sc := connPair(t, "secret", RoleClient)
	sizes := []int{20_000, 500, 60_000, 3_000}
	for i, n := range sizes {
		m := &Msg{Op: OpUpdateGraph, ID: uint64(i)}
		for j := range n {
			m.Tasks = append(m.Tasks, graph.Task{Key: fmt.Sprintf("t-%d-%d", i, j), Kind: graph.KindPy,
				Func: "f", Payload: []byte{0, byte(j), byte(i)}})
		}
		require.NoError(t, cc.Send(m))
	}
	for i, n := range sizes {
		m, _, err := sc.Recv()
		require.NoError(t, err)
		require.Equal(t, uint64(i), m.ID)
		require.Len(t, m.Tasks, n)
		for j, task := range m.Tasks {
			require.Equal(t, fmt.Sprintf("t-%d-%d", i, j), task.Key)
			require.Equal(t, []byte{0, byte(j), byte(i)}, task.Payload)
		}
		require.Nil(t, sc.scratch.big, "given back once decoded")
	}
}

// Abort drops what is queued: a message queued and never flushed does not reach the peer,
// whose next read fails instead (the writer Abort starts only ends the output; before, it
// raced Abort's close to write the queue), and a queued file frame's file is closed.
func TestAbortDropsQueuedOutput(t *testing.T) {
	for i := range 50 {
		cc, sc := connPair(t, "", RoleClient)
		require.NoError(t, sc.Queue(&Msg{Op: OpInfo, ID: 7}, make([]byte, 1<<20)))
		f := memfdWith(t, []byte("data"))
		hdr, err := EncodeHeader(&Msg{Op: OpData, ID: 8})
		require.NoError(t, err)
		require.NoError(t, sc.enqueueFrames(hdr, []Frame{{File: f, Len: 4}})) // queued, not flushed
		require.NoError(t, sc.Abort())
		require.True(t, closed(f), "round %d: a dropped file frame's file is closed", i)
		m, _, err := cc.Recv()
		require.Error(t, err, "round %d: got %v", i, m)
		cc.Close()
		select {
		case <-sc.done:
		case <-time.After(5 * time.Second):
			t.Fatal("the aborted connection's output never ended")
		}
	}
}
