package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// sealedMemfd returns a memfd named name holding data at offset off, sealed as an executor
// seals a result segment (or not sealed, with seal false).
func sealedMemfd(t *testing.T, name string, data []byte, off int64, seal bool) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Skipf("no memfd: %v", err)
	}
	f := os.NewFile(uintptr(fd), name)
	require.NoError(t, f.Truncate(off+int64(len(data))))
	_, err = f.WriteAt(data, off)
	require.NoError(t, err)
	if seal {
		_, err = unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS,
			unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL)
		require.NoError(t, err)
	}
	return f
}

// openMemfds counts this process's descriptors of memfds named name.
func openMemfds(t *testing.T, name string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	n := 0
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if l == "/memfd:"+name+" (deleted)" {
			n++
		}
	}
	return n
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(fd, &st))
	return st.Ino
}

// sendWithFds writes b from f's end of a socketpair with fds attached to its first byte.
func sendWithFds(t *testing.T, f *os.File, b []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	n, err := syscall.SendmsgN(int(f.Fd()), b, oob, nil, 0)
	require.NoError(t, err)
	require.Equal(t, len(b), n)
}

// execMsg encodes one executor message.
func execMsg(t *testing.T, hdr map[string]any, frames ...[]byte) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, wire.WriteFrames(&b, append([][]byte{mustPack(t, hdr)}, frames...)))
	return b.Bytes()
}

func segDone(t *testing.T, id int, seg [][3]int) []byte {
	return execMsg(t, map[string]any{"op": "done", "id": id, "seg": seg,
		"items": []map[string]any{{"key": "k", "encoding": "bytes", "nframes": 1, "nbytes": 8}}}, nil)
}

func plainDone(t *testing.T, id int) []byte {
	return execMsg(t, map[string]any{"op": "done", "id": id,
		"items": []map[string]any{{"key": "k", "encoding": "bytes", "nframes": 1, "nbytes": 1}}}, []byte("x"))
}

// The executor connection hands each received descriptor to the message that declares it, in
// order, also when several messages arrive in one read; a descriptor no message declares, or a
// declared one that never came, is a protocol error.
func TestExecConnDescriptors(t *testing.T) {
	c, other := socketpair(t)
	a := sealedMemfd(t, "fdq-a", []byte("aaaaaaaa"), 0, true)
	b := sealedMemfd(t, "fdq-b", []byte("bbbbbbbb"), 0, true)
	defer a.Close()
	defer b.Close()
	recvFds := func(wantID uint64) []int {
		t.Helper()
		m, x, _, err := c.recvExt()
		require.NoError(t, err)
		require.Equal(t, wantID, m.ID)
		t.Cleanup(func() { closeFds(x.fds) })
		return x.fds
	}

	// a message without descriptors, then one with: written before anything is read, they
	// arrive in one read (the kernel joins data to the segment that carries descriptors)
	sendWithFds(t, other, plainDone(t, 1))
	sendWithFds(t, other, segDone(t, 2, [][3]int{{0, 0, 8}}), int(a.Fd()))
	require.Empty(t, recvFds(1))
	require.Positive(t, c.br.Buffered(), "the second message came with the first read")
	fds := recvFds(2)
	require.Len(t, fds, 1)
	require.Equal(t, inode(t, int(a.Fd())), inode(t, fds[0]))

	// one write carrying two messages, the first declaring the descriptor sent with it
	both := append(segDone(t, 3, [][3]int{{0, 0, 8}}), plainDone(t, 4)...)
	sendWithFds(t, other, both, int(b.Fd()))
	fds = recvFds(3)
	require.Len(t, fds, 1)
	require.Equal(t, inode(t, int(b.Fd())), inode(t, fds[0]))
	require.Empty(t, recvFds(4))

	// two messages with a descriptor each: in order
	sendWithFds(t, other, segDone(t, 5, [][3]int{{0, 0, 8}}), int(b.Fd()))
	sendWithFds(t, other, segDone(t, 6, [][3]int{{0, 0, 8}}), int(a.Fd()))
	require.Equal(t, inode(t, int(b.Fd())), inode(t, recvFds(5)[0]))
	require.Equal(t, inode(t, int(a.Fd())), inode(t, recvFds(6)[0]))

	// a descriptor sent with a message that does not declare it: the next message finds it
	// stale; the connection is then broken, and closing it closes the descriptor
	u := sealedMemfd(t, "fdq-undeclared", []byte("uuuuuuuu"), 0, true)
	sendWithFds(t, other, plainDone(t, 7), int(u.Fd()))
	u.Close()
	require.Empty(t, recvFds(7))
	sendWithFds(t, other, plainDone(t, 8))
	_, _, _, err := c.recvExt()
	require.ErrorIs(t, err, wire.ErrProtocol)
	require.Equal(t, 1, openMemfds(t, "fdq-undeclared"))
	c.close()
	require.Zero(t, openMemfds(t, "fdq-undeclared"))
}

func TestExecConnDeclaredDescriptorMissing(t *testing.T) {
	c, other := socketpair(t)
	sendWithFds(t, other, segDone(t, 1, [][3]int{{0, 0, 8}}))
	_, _, _, err := c.recvExt()
	require.ErrorIs(t, err, wire.ErrProtocol)
	require.ErrorContains(t, err, "declares 1 descriptors, 0 arrived")
}

// pyResult turns a done answer with a segment into a segment-backed result, and refuses an
// unsealed memfd or a placement outside it (closing the descriptor either way).
func TestPyResultSegment(t *testing.T) {
	data := payload(3, 5000)
	done := &wire.Msg{Op: wire.OpDone, ID: 1, Items: []wire.Item{{Key: "k", Encoding: wire.EncPickle, NFrames: 2}}}
	frames := [][]byte{[]byte("head"), {}}
	dupOf := func(f *os.File) []int {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		require.NoError(t, err)
		return []int{fd}
	}

	f := sealedMemfd(t, "pyres-ok", data, 64, true)
	r := pyResult(done, execExt{Seg: []segPlace{{Frame: 1, Off: 64, Len: 5000}}, fds: dupOf(f)}, frames, nil, nil)
	f.Close()
	require.Nil(t, r.err)
	require.NotNil(t, r.seg)
	got, err := r.seg.read(r.frames, func(n int) []byte { return make([]byte, n) })
	require.NoError(t, err)
	require.Equal(t, [][]byte{[]byte("head"), data}, got)
	r.seg.close()

	f = sealedMemfd(t, "pyres-bad", data, 0, false)
	r = pyResult(done, execExt{Seg: []segPlace{{Frame: 1, Off: 0, Len: 5000}}, fds: dupOf(f)}, frames, nil, nil)
	require.NotNil(t, r.err)
	require.Contains(t, r.err.Message, "not sealed")
	f.Close()
	f = sealedMemfd(t, "pyres-bad", data, 0, true)
	r = pyResult(done, execExt{Seg: []segPlace{{Frame: 1, Off: 1, Len: 5000}}, fds: dupOf(f)}, frames, nil, nil)
	require.NotNil(t, r.err)
	require.Contains(t, r.err.Message, "bad segment placement")
	f.Close()
	require.Zero(t, openMemfds(t, "pyres-bad"), "refused segments are closed")
	require.Zero(t, openMemfds(t, "pyres-ok"))
}

// newTestSegment is a segment-backed value: an inline header frame and data at offset 128.
func newTestSegment(t *testing.T, name string, data []byte) ([][]byte, *Segment) {
	t.Helper()
	frames := [][]byte{[]byte("hdr"), {}}
	seg, err := newSegment(sealedMemfd(t, name, data, 128, true), []segPlace{{Frame: 1, Off: 128, Len: int64(len(data))}}, frames)
	require.NoError(t, err)
	return frames, seg
}

// Segment-backed values: Get reads their bytes, GetRef hands out the segment, memory counts
// them, and Delete, replacing, spilling and Close close the memfd.
func TestStoreSegmentValues(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir, 0)
	data := payload(7, 300_000)
	frames, seg := newTestSegment(t, "store-a", data)
	require.EqualValues(t, 3+len(data), s.PutSegment("a", wire.EncPickle, frames, seg))
	st := s.Stats()
	require.EqualValues(t, 3+len(data), st.Memory)
	require.EqualValues(t, 128+len(data), st.Segments)
	require.Equal(t, 1, openMemfds(t, "store-a"))

	e, err := s.Get("a", true)
	require.NoError(t, err)
	require.Nil(t, e.Seg)
	require.Equal(t, [][]byte{[]byte("hdr"), data}, e.Frames)
	require.EqualValues(t, 3+len(data), e.NBytes)
	s.SetObj(e, "decoded")
	e, err = s.GetRef("a", true)
	require.NoError(t, err)
	require.NotNil(t, e.Seg)
	require.Empty(t, e.Frames[1])
	require.Nil(t, e.Obj, "no cached copy of a segment-backed value")

	// a reader racing with Delete gets the bytes or ErrNotFound, never garbage
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 200 {
			e, err := s.Get("a", false)
			if err != nil {
				require.ErrorIs(t, err, ErrNotFound)
				return
			}
			require.True(t, bytes.Equal(data, e.Frames[1]))
		}
	}()
	require.Equal(t, 1, s.Delete("a"))
	wg.Wait()
	require.Zero(t, openMemfds(t, "store-a"))
	require.Equal(t, StoreStats{}, s.Stats())
	_, err = e.Seg.dup()
	require.ErrorIs(t, err, ErrNotFound, "a borrowed segment of a deleted value says so")

	// replacing a value closes its segment
	frames, seg = newTestSegment(t, "store-b", data)
	s.PutSegment("b", wire.EncPickle, frames, seg)
	s.Put("b", wire.EncBytes, [][]byte{[]byte("small")}, nil)
	require.Zero(t, openMemfds(t, "store-b"))
	require.Zero(t, s.Stats().Segments)

	// Close closes every segment
	for i := range 3 {
		frames, seg = newTestSegment(t, "store-c", data)
		s.PutSegment(fmt.Sprint("c", i), wire.EncPickle, frames, seg)
	}
	require.Equal(t, 3, openMemfds(t, "store-c"))
	s.Close()
	require.Zero(t, openMemfds(t, "store-c"))
}

func TestStoreSpillsSegment(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir, 400_000)
	data := payload(9, 300_000)
	frames, seg := newTestSegment(t, "spill-a", data)
	s.PutSegment("a", wire.EncPickle, frames, seg)
	s.Put("b", wire.EncBytes, [][]byte{payload(1, 200_000)}, nil) // over the limit: a is spilled
	st := s.Stats()
	require.Equal(t, 1, st.SpilledKeys)
	require.EqualValues(t, 3+len(data), st.Spilled)
	require.Zero(t, st.Segments)
	require.Zero(t, openMemfds(t, "spill-a"), "spilling frees the shared memory")

	e, err := s.Get("a", false)
	require.NoError(t, err)
	require.Equal(t, [][]byte{[]byte("hdr"), data}, e.Frames)
	s.Delete("b")
	e, err = s.GetRef("a", true) // back in memory, as an ordinary value
	require.NoError(t, err)
	require.Nil(t, e.Seg)
	require.Equal(t, [][]byte{[]byte("hdr"), data}, e.Frames)
	require.EqualValues(t, 3+len(data), s.Stats().Memory)
}

func TestNewSegmentChecks(t *testing.T) {
	data := payload(1, 1000)
	unsealed := sealedMemfd(t, "chk-unsealed", data, 0, false)
	defer unsealed.Close()
	_, err := newSegment(unsealed, []segPlace{{Frame: 0, Off: 0, Len: 1000}}, [][]byte{{}})
	require.ErrorContains(t, err, "not sealed")

	f := sealedMemfd(t, "chk", data, 0, true)
	defer f.Close()
	for _, c := range []struct {
		at     []segPlace
		frames [][]byte
	}{
		{[]segPlace{{Frame: 0, Off: 1, Len: 1000}}, [][]byte{{}}},                            // past the end
		{[]segPlace{{Frame: 1, Off: 0, Len: 10}}, [][]byte{{}}},                              // no such frame
		{[]segPlace{{Frame: 0, Off: 0, Len: 10}}, [][]byte{[]byte("x")}},                     // frame not empty
		{[]segPlace{{Frame: 0, Off: 0, Len: 10}, {Frame: 0, Off: 0, Len: 10}}, [][]byte{{}}}, // twice
		{[]segPlace{{Frame: 0, Off: -1, Len: 10}}, [][]byte{{}}},
		{nil, [][]byte{{}}},
	} {
		_, err := newSegment(f, c.at, c.frames)
		require.Error(t, err, "%+v", c.at)
	}

	plain, err := os.CreateTemp(t.TempDir(), "plain")
	require.NoError(t, err)
	defer plain.Close()
	_, err = newSegment(plain, []segPlace{{Frame: 0, Off: 0, Len: 0}}, [][]byte{{}})
	require.ErrorContains(t, err, "not a memfd")
}

// A peer's segment is opened through /proc and accepted only if it is the memfd described:
// a descriptor number closed and reused since (another file behind it) is refused.
func TestOpenPeerSegment(t *testing.T) {
	data := payload(5, 10_000)
	frames := [][]byte{{}}
	at := []segPlace{{Frame: 0, Off: 0, Len: int64(len(data))}}
	f := sealedMemfd(t, "peer-a", data, 0, true)
	fd := int(f.Fd())
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(fd, &st))
	ps := peerSeg{Key: "k", PID: os.Getpid(), FD: fd, Dev: uint64(st.Dev), Ino: st.Ino, Frames: at}

	seg, err := openPeerSegment(ps, frames)
	require.NoError(t, err)
	got, err := seg.read(frames, func(n int) []byte { return make([]byte, n) })
	require.NoError(t, err)
	require.Equal(t, data, got[0])
	seg.close()

	wrong := ps
	wrong.Ino++
	_, err = openPeerSegment(wrong, frames)
	require.ErrorContains(t, err, "not the peer's segment")

	// the peer closed the value and the number now names another memfd
	f.Close()
	g := sealedMemfd(t, "peer-b", data, 0, true)
	defer g.Close()
	if int(g.Fd()) != fd {
		t.Logf("descriptor %d was not reused (got %d); checking the closed one only", fd, g.Fd())
		_, err = openPeerSegment(ps, frames)
		require.Error(t, err)
	} else {
		_, err = openPeerSegment(ps, frames)
		require.ErrorContains(t, err, "not the peer's segment")
	}
	require.Zero(t, openMemfds(t, "peer-a"))
	require.Equal(t, 1, openMemfds(t, "peer-b"), "the rejected file was closed")
	// a segment closed (or its number reused) since the answer is the value going away, not
	// a reason to stop asking that peer for descriptors
	require.False(t, segmentsBlocked(err, os.Getpid()))
	_, err = openPeerSegment(peerSeg{PID: os.Getpid(), FD: 1 << 20, Frames: at}, frames)
	require.Error(t, err)
	require.False(t, segmentsBlocked(err, os.Getpid()))
	require.True(t, segmentsBlocked(fmt.Errorf("open: %w", os.ErrPermission), os.Getpid()))

	_, err = openPeerSegment(peerSeg{PID: 1 << 30, FD: 3, Frames: at}, frames)
	require.Error(t, err)
	require.True(t, segmentsBlocked(err, 1<<30), "no such process here: another pid namespace")
	_, err = openPeerSegment(peerSeg{PID: 0, FD: 3, Frames: at}, frames)
	require.Error(t, err)
}

// A worker on this machine takes a peer's segment-backed value as a descriptor; when the
// descriptor cannot be opened it fetches the bytes over TCP and stops asking that peer.
func TestPeerSegmentHandOver(t *testing.T) {
	if hostID() == "" || !shmEnabled {
		t.Skip("segments are off (no boot id, or SHOAL_EXECUTOR_SHM=0)")
	}
	src := newTestWorker(t, testConfig(t))
	dst := newTestWorker(t, testConfig(t))
	data := payload(2, 2<<20)
	for i := range 3 {
		frames, seg := newTestSegment(t, "handover", data)
		src.Store().PutSegment(fmt.Sprint("v", i), wire.EncPickle, frames, seg)
	}
	src.Store().Put("plain", wire.EncBytes, [][]byte{[]byte("inline")}, nil)

	got, err := dst.peers.getData(context.Background(), src.DataAddr(), []string{"v0", "plain", "gone"})
	require.NoError(t, err)
	require.Len(t, got, 2)
	for _, r := range got {
		if r.item.Key == "v0" {
			require.NotNil(t, r.seg)
			require.EqualValues(t, 3+len(data), r.item.NBytes)
			dst.Store().PutSegment(r.item.Key, r.item.Encoding, r.frames, r.seg)
		} else {
			require.Nil(t, r.seg)
			require.Equal(t, [][]byte{[]byte("inline")}, r.frames)
		}
	}
	require.EqualValues(t, 1, src.Metrics().ShmTransfersOut)
	require.Less(t, src.Metrics().BytesSent, int64(100), "no bytes of the value went over TCP")
	e, err := dst.Store().Get("v0", true)
	require.NoError(t, err)
	require.Equal(t, data, e.Frames[1])
	// the source drops its value: the copy taken over stays intact
	src.Store().Delete("v0")
	e, err = dst.Store().Get("v0", true)
	require.NoError(t, err)
	require.Equal(t, data, e.Frames[1])

	// /proc that does not have the peer (another pid namespace): bytes over TCP, then no more
	// attempts with that peer
	old := procRoot
	procRoot = t.TempDir()
	t.Cleanup(func() { procRoot = old })
	got, err = dst.peers.getData(context.Background(), src.DataAddr(), []string{"v1"})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Nil(t, got[0].seg)
	require.Equal(t, data, got[0].frames[1])
	require.EqualValues(t, 2, src.Metrics().ShmTransfersOut, "offered, but could not be opened")
	got, err = dst.peers.getData(context.Background(), src.DataAddr(), []string{"v2"})
	require.NoError(t, err)
	require.Nil(t, got[0].seg)
	require.Equal(t, data, got[0].frames[1])
	require.EqualValues(t, 2, src.Metrics().ShmTransfersOut, "the peer is not asked for descriptors again")

	// the switch off: nothing is offered
	procRoot = old
	oldShm := shmEnabled
	shmEnabled = false
	t.Cleanup(func() { shmEnabled = oldShm })
	dst2 := newTestWorker(t, testConfig(t))
	got, err = dst2.peers.getData(context.Background(), src.DataAddr(), []string{"v2"})
	require.NoError(t, err)
	require.Nil(t, got[0].seg)
	require.Equal(t, data, got[0].frames[1])
	require.EqualValues(t, 2, src.Metrics().ShmTransfersOut)
}

// A get_data without the capability, or from a client, gets the bytes of a segment-backed
// value.
func TestDataServerSegmentBytes(t *testing.T) {
	w := newTestWorker(t, testConfig(t))
	data := payload(4, 1<<20)
	frames, seg := newTestSegment(t, "served", data)
	w.Store().PutSegment("v", wire.EncPickle, frames, seg)
	for _, role := range []wire.Role{wire.RoleClient, wire.RolePeer} {
		c := dialData(t, w.DataAddr(), "", role)
		reply, got := getData(t, c, 1, "v")
		require.Equal(t, []wire.Item{{Key: "v", Encoding: wire.EncPickle, NFrames: 2, NBytes: int64(3 + len(data))}}, reply.Items)
		require.Equal(t, [][]byte{[]byte("hdr"), data}, got)
	}
	// a client asking for descriptors does not get them
	hdr, err := wire.EncodeHeader(&wire.Msg{Op: wire.OpGetData, ID: 2, Keys: []string{"v"}})
	require.NoError(t, err)
	hdr, err = appendExt(hdr, "shm", 1)
	require.NoError(t, err)
	hdr, err = appendExt(hdr, "shm_host", hostID())
	require.NoError(t, err)
	c := dialData(t, w.DataAddr(), "", wire.RoleClient)
	require.NoError(t, c.SendRaw(hdr))
	m, got, err := c.Recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpData, m.Op)
	require.Equal(t, [][]byte{[]byte("hdr"), data}, got)
	require.Zero(t, w.Metrics().ShmTransfersOut)
}

// A worker and its real Python executor: a segment-backed dependency reaches the task as a
// descriptor (or, for an executor that does not take segments, as bytes), a large result comes
// back in a segment (or through the socket), and closing the worker closes every segment.
func TestPythonExecutorSegments(t *testing.T) {
	for _, execSeg := range []bool{true, false} {
		t.Run(fmt.Sprintf("executor-segments=%v", execSeg), func(t *testing.T) {
			if !shmEnabled {
				t.Skip("SHOAL_EXECUTOR_SHM=0")
			}
			py := shoalPython(t)
			if !execSeg {
				// the executor's environment only: the worker read its switch at start
				t.Setenv("SHOAL_EXECUTOR_SHM", "0")
			}
			hd, fd, pd := realPyTask(t, py, "digest")
			hb, fb, pb := realPyTask(t, py, "blob")
			w, sc, cancel, done := startPyWorker(t, py, nil)

			data := payload(6, 3<<20)
			seg, err := newSegment(sealedMemfd(t, "exec-dep", data, 4096, true),
				[]segPlace{{Frame: 0, Off: 4096, Len: int64(len(data))}}, [][]byte{{}})
			require.NoError(t, err)
			w.Store().PutSegment("big", wire.EncBytes, [][]byte{{}}, seg)
			sc.send(pyTask("digest", hd, fd, pd, "big"))
			sc.expect(wire.OpTaskFinished)
			c := dialData(t, w.DataAddr(), "", wire.RoleClient)
			_, frames := getData(t, c, 1, "digest")
			var got string
			require.NoError(t, msgpack.Unmarshal(frames[0], &got))
			sum := sha256.Sum256(data)
			require.Equal(t, fmt.Sprintf("%d:%s", len(data), hex.EncodeToString(sum[:])), got)

			sc.send(pyTask("blob", hb, fb, pb))
			fin := sc.expect(wire.OpTaskFinished)
			require.EqualValues(t, 3<<20, fin.NBytes)
			_, frames = getData(t, c, 2, "blob")
			require.Equal(t, [][]byte{bytes.Repeat([]byte{7}, 3<<20)}, frames)
			st := w.Store().Stats()
			if execSeg {
				require.EqualValues(t, 1, w.py.segsOut.Load(), "the dependency went as its descriptor")
				require.EqualValues(t, 1, w.py.segsIn.Load(), "the result came in a segment")
				require.EqualValues(t, int64(4096+len(data)+3<<20), st.Segments)
				// the data server sent "blob" from a duplicate of its descriptor, which the
				// connection's writer closes once written: after the client had the bytes
				eventually(t, func() bool { return openMemfds(t, "shoal-result") == 1 })
			} else {
				require.Zero(t, w.py.segsOut.Load())
				require.Zero(t, w.py.segsIn.Load())
				require.EqualValues(t, 4096+len(data), st.Segments)
			}
			// more segment-backed dependencies than one run passes as descriptors
			hj, fj, pj := realPyTask(t, py, "join70")
			var deps []string
			h := sha256.New()
			for i := range 70 {
				v := payload(i, 64<<10)
				h.Write(v)
				seg, err := newSegment(sealedMemfd(t, "exec-dep", v, 0, true),
					[]segPlace{{Frame: 0, Off: 0, Len: int64(len(v))}}, [][]byte{{}})
				require.NoError(t, err)
				w.Store().PutSegment(fmt.Sprint("s", i), wire.EncBytes, [][]byte{{}}, seg)
				deps = append(deps, fmt.Sprint("s", i))
			}
			sc.send(pyTask("join", hj, fj, pj, deps...))
			sc.expect(wire.OpTaskFinished)
			_, frames = getData(t, c, 3, "join")
			require.NoError(t, msgpack.Unmarshal(frames[0], &got))
			require.Equal(t, hex.EncodeToString(h.Sum(nil)), got)
			if execSeg {
				require.EqualValues(t, 1+segMaxPerRun, w.py.segsOut.Load())
			}

			cancel()
			<-done
			w.Close()
			require.Zero(t, openMemfds(t, "shoal-result"))
			require.Zero(t, openMemfds(t, "exec-dep"))
		})
	}
}

// DeleteAsync forgets the keys at once and closes their memfds in the background (the worker's
// free-keys handling: freeing a segment's pages must not hold up its receive loop).
func TestStoreDeleteAsyncClosesSegmentsLater(t *testing.T) {
	s := NewStore(t.TempDir(), 0)
	data := payload(3, 300_000)
	for i := range 3 {
		frames, seg := newTestSegment(t, "store-async", data)
		s.PutSegment(fmt.Sprint("k", i), wire.EncPickle, frames, seg)
	}
	s.Put("small", wire.EncBytes, [][]byte{[]byte("x")}, nil)
	require.Equal(t, 3, openMemfds(t, "store-async"))
	require.Equal(t, 3, s.DeleteAsync("k0", "k1", "k2", "missing"))
	for i := range 3 {
		_, err := s.Get(fmt.Sprint("k", i), false)
		require.ErrorIs(t, err, ErrNotFound, "deleted keys are gone when DeleteAsync returns")
	}
	st := s.Stats()
	require.Zero(t, st.Segments)
	require.Equal(t, 1, st.Keys)
	require.Eventually(t, func() bool { return openMemfds(t, "store-async") == 0 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, 1, s.DeleteAsync("small"))
	require.Equal(t, StoreStats{}, s.Stats())
}
