package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

const testToken = "s3cret"

func dataWorker(t *testing.T) *Worker {
	cfg := testConfig(t)
	cfg.Token = testToken
	cfg.Limits = wire.DefaultLimits()
	cfg.Limits.MaxFrame = 1 << 20
	return newTestWorker(t, cfg)
}

// putAndGet scatters two values and reads them back; it is the "good client" of every test.
func putAndGet(t *testing.T, addr string) {
	t.Helper()
	c := dialData(t, addr, testToken, wire.RoleClient)
	items := []wire.Item{
		{Key: "raw", Encoding: wire.EncBytes, NFrames: 1},
		{Key: "pickled", Encoding: wire.EncPickle, NFrames: 2},
	}
	frames := [][]byte{[]byte("hello"), []byte("pickle"), bytes.Repeat([]byte{7}, 100<<10)}
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpPutData, ID: 1, Items: items}, frames...))
	m, _, err := c.Recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpPutOK, m.Op, "%+v", m)
	require.Equal(t, uint64(1), m.ID)

	reply, got := getData(t, c, 2, "pickled", "nope", "raw")
	require.Equal(t, []string{"nope"}, reply.Missing)
	require.Equal(t, []wire.Item{
		{Key: "pickled", Encoding: wire.EncPickle, NFrames: 2, NBytes: 6 + 100<<10},
		{Key: "raw", Encoding: wire.EncBytes, NFrames: 1, NBytes: 5},
	}, reply.Items)
	require.Equal(t, [][]byte{frames[1], frames[2], frames[0]}, got)
}

func TestDataServerPutGet(t *testing.T) {
	w := dataWorker(t)
	putAndGet(t, w.DataAddr())
	m := w.Metrics()
	require.Equal(t, int64(5+6+100<<10), m.BytesSent)
	require.Equal(t, int64(5+6+100<<10), m.BytesReceived)
	require.Equal(t, 2, m.Keys)

	// A peer may read but not put.
	p := dialData(t, w.DataAddr(), testToken, wire.RolePeer)
	require.NoError(t, p.Send(&wire.Msg{Op: wire.OpPutData, ID: 9, Items: []wire.Item{{Key: "x", Encoding: wire.EncBytes, NFrames: 1}}}, []byte("x")))
	m2, _, err := p.Recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpError, m2.Op)
	require.Equal(t, wire.CodeBadRole, m2.Code)
	require.Equal(t, uint64(9), m2.ID)
	reply, _ := getData(t, p, 10, "x", "raw")
	require.Equal(t, []string{"x"}, reply.Missing, "the refused put stored nothing")
}

// rawConn performs the handshake and returns the connection for raw writes plus a wire.Conn
// to read answers.
func rawConn(t *testing.T, addr string) (net.Conn, *wire.Conn) {
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	c, err := wire.ClientHandshake(context.Background(), nc, wire.DialOptions{Role: wire.RoleClient, Token: testToken})
	require.NoError(t, err)
	t.Cleanup(func() { c.Abort() })
	return nc, c
}

// frameList encodes a message by hand so that tests can lie about lengths.
func frameList(lengths []uint64, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(lengths)))
	for _, l := range lengths {
		b = binary.BigEndian.AppendUint64(b, l)
	}
	return append(b, body...)
}

func expectErrorThenClose(t *testing.T, c *wire.Conn, code string) {
	t.Helper()
	m, _, err := c.Recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpError, m.Op)
	require.Equal(t, code, m.Code, m.Message)
	_, _, err = c.Recv()
	require.Error(t, err, "the connection is closed after a fatal error")
}

func TestDataServerBadInput(t *testing.T) {
	w := dataWorker(t)
	addr := w.DataAddr()

	t.Run("random bytes", func(t *testing.T) {
		nc, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer nc.Close()
		junk := make([]byte, 4096)
		rand.Read(junk)
		copy(junk, "JUNK")
		nc.Write(junk)
		err = wire.ReadAnswer(nc)
		var herr *wire.HandshakeError
		require.ErrorAs(t, err, &herr)
		require.Equal(t, wire.CodeBadMagic, herr.Code())
		rest, _ := io.ReadAll(nc) // returns once the server has closed (EOF or reset)
		require.Empty(t, rest, "nothing follows the refusal")
	})
	t.Run("wrong token", func(t *testing.T) {
		_, err := wire.Dial(context.Background(), addr, wire.DialOptions{Role: wire.RoleClient, Token: "wrong"})
		var herr *wire.HandshakeError
		require.ErrorAs(t, err, &herr)
		require.Equal(t, wire.CodeAuthFailed, herr.Code())
	})
	t.Run("wrong role", func(t *testing.T) {
		_, err := wire.Dial(context.Background(), addr, wire.DialOptions{Role: wire.RoleWorker, Token: testToken})
		var herr *wire.HandshakeError
		require.ErrorAs(t, err, &herr)
		require.Equal(t, wire.CodeBadRole, herr.Code())
	})
	t.Run("oversized frame declared", func(t *testing.T) {
		nc, c := rawConn(t, addr)
		hdr, _ := msgpack.Marshal(map[string]any{"op": "put_data"})
		nc.Write(frameList([]uint64{uint64(len(hdr)), 1 << 40}, hdr))
		expectErrorThenClose(t, c, wire.CodeFrameTooLarge)
	})
	t.Run("header not a map", func(t *testing.T) {
		nc, c := rawConn(t, addr)
		hdr, _ := msgpack.Marshal([]int{1, 2, 3})
		nc.Write(frameList([]uint64{uint64(len(hdr))}, hdr))
		expectErrorThenClose(t, c, wire.CodeProtocol)
	})
	t.Run("zero frames", func(t *testing.T) {
		nc, c := rawConn(t, addr)
		nc.Write(frameList(nil, nil))
		expectErrorThenClose(t, c, wire.CodeProtocol)
	})
	t.Run("put_data frames do not match items", func(t *testing.T) {
		c := dialData(t, addr, testToken, wire.RoleClient)
		items := []wire.Item{{Key: "a", Encoding: wire.EncBytes, NFrames: 3}}
		require.NoError(t, c.Send(&wire.Msg{Op: wire.OpPutData, ID: 4, Items: items}, []byte("a")))
		expectErrorThenClose(t, c, wire.CodeProtocol)
	})
	t.Run("put_data unknown encoding", func(t *testing.T) {
		c := dialData(t, addr, testToken, wire.RoleClient)
		items := []wire.Item{{Key: "a", Encoding: "json", NFrames: 1}}
		require.NoError(t, c.Send(&wire.Msg{Op: wire.OpPutData, ID: 4, Items: items}, []byte("a")))
		expectErrorThenClose(t, c, wire.CodeProtocol)
	})
	t.Run("unknown op keeps the connection", func(t *testing.T) {
		c := dialData(t, addr, testToken, wire.RoleClient)
		require.NoError(t, c.Send(&wire.Msg{Op: "launch_missiles", ID: 5}))
		m, _, err := c.Recv()
		require.NoError(t, err)
		require.Equal(t, wire.CodeUnknownOp, m.Code)
		require.Equal(t, uint64(5), m.ID)
		reply, _ := getData(t, c, 6, "nothing")
		require.Equal(t, []string{"nothing"}, reply.Missing)
	})
	t.Run("truncated message", func(t *testing.T) {
		nc, c := rawConn(t, addr)
		nc.Write(frameList([]uint64{100}, []byte("short")))
		nc.(*net.TCPConn).CloseWrite()
		_, _, err := c.Recv()
		require.Error(t, err)
	})

	// After all that, a good client is served.
	putAndGet(t, addr)
	require.Equal(t, 2, w.Metrics().Keys, "no bad request stored anything")
}

// TestGetDataOverFrameLimit: a get_data whose answer would exceed the frame limit is refused
// with frame-too-large and a clear message (not sent for the reader to reject), and a worker's
// fetch splits its request until the halves fit.
func TestGetDataOverFrameLimit(t *testing.T) {
	cfg := testConfig(t)
	cfg.Limits = wire.DefaultLimits()
	cfg.Limits.MaxFrames = 8
	src, dst := newTestWorker(t, cfg), newTestWorker(t, cfg)
	var keys []string
	for i := range 6 {
		k := string(rune('a' + i))
		keys = append(keys, k)
		src.Store().Put(k, wire.EncPickle, [][]byte{[]byte("head" + k), []byte("b1"), []byte("b2")}, nil)
	}
	src.Store().Put("huge", wire.EncPickle, make([][]byte, 9), nil)

	c := dialData(t, src.DataAddr(), "", wire.RolePeer)
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpGetData, ID: 1, Keys: keys}))
	m, _, err := c.Recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpError, m.Op)
	require.Equal(t, wire.CodeFrameTooLarge, m.Code)
	require.Contains(t, m.Message, "ask for fewer keys")
	_, frames := getData(t, c, 2, "a", "b") // the connection goes on
	require.Len(t, frames, 6)

	got, err := dst.peers.getData(context.Background(), src.DataAddr(), keys)
	require.NoError(t, err)
	require.Len(t, got, 6)
	for i, r := range got {
		require.Equal(t, keys[i], r.item.Key)
		require.Equal(t, []byte("head"+keys[i]), r.frames[0])
	}
	_, err = dst.peers.getData(context.Background(), src.DataAddr(), []string{"huge"})
	require.ErrorContains(t, err, "over the limits of 8 frames")
}

// A pooled connection the peer closed while it sat idle (its data-idle timeout) is replaced
// on the next fetch, which succeeds: an idle cluster's first fetch does not fail.
func TestPooledConnectionClosedByPeer(t *testing.T) {
	cfg := testConfig(t)
	cfg.DataIdleTimeout = 100 * time.Millisecond
	src := newTestWorker(t, cfg)
	dst := newTestWorker(t, testConfig(t))
	src.Store().Put("v", wire.EncBytes, [][]byte{[]byte("value")}, nil)
	for range 3 {
		got, err := dst.peers.getData(context.Background(), src.DataAddr(), []string{"v"})
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Equal(t, []byte("value"), got[0].frames[0])
		time.Sleep(300 * time.Millisecond) // src closes the pooled connection meanwhile
	}
}

// A client on this machine may put a large value as a sealed memfd (seg + shm_host): the worker
// keeps the memfd as the value. A segment from another host id, or an unsealed one, is refused
// with an error on that connection only.
func TestDataServerPutSegment(t *testing.T) {
	if !shmEnabled || hostID() == "" {
		t.Skip("no shared memory here")
	}
	w := dataWorker(t)
	addr := w.DataAddr()
	data := bytes.Repeat([]byte("seg!"), 1<<18) // 1 MiB
	put := func(t *testing.T, sealed bool, host string) *wire.Msg {
		f := sealedMemfd(t, "shoal-put-test", data, 64, sealed)
		defer f.Close()
		var st unix.Stat_t
		require.NoError(t, unix.Fstat(int(f.Fd()), &st))
		hdr, err := msgpack.Marshal(map[string]any{"op": "put_data", "id": 3,
			"items":    []map[string]any{{"key": "big", "encoding": "bytes", "nframes": 1}},
			"seg":      []map[string]any{{"key": "big", "pid": os.Getpid(), "fd": int(f.Fd()), "dev": st.Dev, "ino": st.Ino, "frames": [][]int64{{0, 64, int64(len(data))}}}},
			"shm_host": host})
		require.NoError(t, err)
		c := dialData(t, addr, testToken, wire.RoleClient)
		require.NoError(t, c.SendRaw(hdr, []byte{}))
		m, _, err := c.Recv()
		require.NoError(t, err)
		if m.Op == wire.OpPutOK {
			_, got := getData(t, c, 4, "big")
			require.Equal(t, [][]byte{data}, got, "the value is read back from the segment")
		}
		return m
	}
	t.Run("accepted", func(t *testing.T) {
		m := put(t, true, hostID())
		require.Equal(t, wire.OpPutOK, m.Op, "%+v", m)
		require.GreaterOrEqual(t, w.store.Stats().Segments, int64(len(data)), "held as a segment")
	})
	t.Run("another host", func(t *testing.T) {
		m := put(t, true, "another boot id")
		require.Equal(t, wire.OpError, m.Op)
		require.Contains(t, m.Message, "shm_host")
	})
	t.Run("unsealed", func(t *testing.T) {
		m := put(t, false, hostID())
		require.Equal(t, wire.OpError, m.Op)
		require.Contains(t, m.Message, "sealed")
	})
	putAndGet(t, addr) // everyone else is still served
}
