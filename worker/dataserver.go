package worker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// acceptLoop serves the data port until the listener is closed. While accepting fails (too
// many open files, say) it keeps trying with backoff, and its heartbeats say it is unhealthy
// so that the scheduler sends it no new work.
func (w *Worker) acceptLoop(ln net.Listener) {
	idle := map[wire.Role]time.Duration{wire.RolePeer: w.cfg.DataIdleTimeout, wire.RoleClient: w.cfg.DataIdleTimeout}
	srv := wire.NewServer(wire.ServeConfig{
		Token:          w.cfg.Token,
		Limits:         w.cfg.limits(),
		MaxConns:       map[wire.Role]int{wire.RolePeer: w.cfg.MaxDataConns, wire.RoleClient: w.cfg.MaxDataConns},
		IdleTimeout:    idle,
		MessageTimeout: w.cfg.MessageTimeout,
		Log:            w.log.With("port", "data"),
		AcceptFailing: func(err error) {
			if err == nil {
				w.unhealthy.Store(nil)
				return
			}
			why := "data port cannot accept connections: " + err.Error()
			w.unhealthy.Store(&why)
		},
	})
	srv.Accept(ln, w.closed.Load, w.goFunc, w.serveData)
}

// serveData serves one data connection (roles peer and client). Bad input gets an error
// message and closes this connection only.
func (w *Worker) serveData(c *wire.Conn) {
	w.mu.Lock()
	if w.mu.closed {
		w.mu.Unlock()
		c.Abort()
		return
	}
	w.mu.dataConns[c] = struct{}{}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.mu.dataConns, c)
		w.mu.Unlock()
	}()
	for {
		m, hdr, frames, err := c.RecvHeader()
		if err != nil {
			w.recvFailed(c, err)
			return
		}
		if !w.serveDataMsg(c, m, hdr, frames) {
			c.Close()
			return
		}
	}
}

// recvFailed answers a framing error with its code (when the peer is still listening) and
// closes the connection.
func (w *Worker) recvFailed(c *wire.Conn, err error) {
	switch {
	case errors.Is(err, wire.ErrFrameTooLarge):
		c.SendError(0, wire.CodeFrameTooLarge, err.Error())
	case errors.Is(err, wire.ErrProtocol):
		c.SendError(0, wire.CodeProtocol, err.Error())
	case errors.Is(err, io.EOF) || w.closed.Load():
		c.Abort()
		return
	}
	w.log.Debug("data connection closed", "remote", c.RemoteAddr(), "err", err)
	c.Close()
}

// serveDataMsg handles one request (hdr is its encoded header, for the fields wire.Msg does
// not have); false means the connection must be closed.
func (w *Worker) serveDataMsg(c *wire.Conn, m *wire.Msg, hdr []byte, frames [][]byte) bool {
	switch m.Op {
	case wire.OpGetData:
		if len(frames) != 0 {
			c.SendError(m.ID, wire.CodeProtocol, "get_data carries no payload frames")
			return false
		}
		offer := false
		if shmEnabled && c.PeerRole == wire.RolePeer && bytes.Contains(hdr, []byte("shm")) {
			x, err := decodeGetDataExt(hdr)
			if err != nil {
				c.SendError(m.ID, wire.CodeProtocol, "bad get_data header: "+err.Error())
				return false
			}
			// descriptors only for workers (authenticated by the handshake) on this machine
			offer = x.SHM == 1 && x.Host != "" && x.Host == hostID()
		}
		return w.serveGet(c, m, offer) == nil
	case wire.OpPutData:
		if c.PeerRole != wire.RoleClient {
			c.SendError(m.ID, wire.CodeBadRole, "put_data is served to clients only")
			return true
		}
		if err := w.servePut(m, hdr, frames); err != nil {
			c.SendError(m.ID, wire.CodeProtocol, err.Error())
			return false
		}
		return c.Send(&wire.Msg{Op: wire.OpPutOK, ID: m.ID}) == nil
	case wire.OpCallStack:
		if c.PeerRole != wire.RoleClient {
			c.SendError(m.ID, wire.CodeBadRole, "call_stack is served to clients only")
			return true
		}
		return c.Send(&wire.Msg{Op: wire.OpOK, ID: m.ID, WhoHas: w.CallStacks(m.Keys)}) == nil
	case wire.OpGetLogs:
		if c.PeerRole != wire.RoleClient {
			c.SendError(m.ID, wire.CodeBadRole, "get_logs is served to clients only")
			return true
		}
		var lines []string
		if w.cfg.Logs != nil {
			lines = w.cfg.Logs(int(m.N))
		}
		return c.Send(&wire.Msg{Op: wire.OpOK, ID: m.ID, Keys: lines}) == nil
	default:
		c.SendError(m.ID, wire.CodeUnknownOp, fmt.Sprintf("op %q is not served on a worker's data port", m.Op))
		return true
	}
}

// getDataExt is get_data's capability to take segment descriptors (docs/protocol.md §3.4).
type getDataExt struct {
	SHM  int64  // shm: 1 when the requester opens segments through /proc
	Host string // shm_host: the requester's boot id: only a peer on this machine can
}

// decodeGetDataExt reads the fields shm and shm_host of a get_data header.
func decodeGetDataExt(hdr []byte) (getDataExt, error) {
	var x getDataExt
	for _, f := range []string{"shm", "shm_host"} {
		raw, ok, err := wire.RawField(hdr, f)
		if err != nil {
			return x, err
		}
		if !ok {
			continue
		}
		r := wire.NewReader(raw)
		if f == "shm" {
			x.SHM, ok = r.Int()
		} else {
			x.Host, ok = r.Str()
		}
		if !ok {
			return x, fmt.Errorf("field %q: %w", f, r.Err())
		}
	}
	return x, nil
}

// serveGet answers get_data with the values held here; frames go out straight from the
// store (large ones written with writev, not copied). With offer, a segment-backed value goes
// as the description of its segment (its frames empty), which the peer opens itself;
// otherwise its bytes are sent from the segment with sendfile(2) (segmentFrames), not read
// into memory first.
func (w *Worker) serveGet(c *wire.Conn, m *wire.Msg, offer bool) error {
	reply := &wire.Msg{Op: wire.OpData, ID: m.ID}
	var payload []wire.Frame
	var segs []peerSeg
	var size int64
	for _, k := range m.Keys {
		var e Entry
		var err error
		var frames []wire.Frame
		for {
			if e, err = w.store.GetRef(k, false); err != nil || e.Seg == nil {
				break
			}
			if offer {
				fd, ferr := e.Seg.fd()
				if ferr == nil {
					segs = append(segs, peerSeg{Key: k, PID: os.Getpid(), FD: fd, Dev: e.Seg.dev, Ino: e.Seg.ino, Frames: e.Seg.at})
					break
				}
			} else if frames, err = segmentFrames(e); err == nil {
				break
			} else if !errors.Is(err, errSegmentGone) {
				// no descriptor to spare (EMFILE, say): read the bytes into memory instead
				frames = nil
				e, err = w.store.Get(k, false)
				break
			}
			// spilled, replaced or deleted meanwhile: look again
		}
		if err != nil {
			reply.Missing = append(reply.Missing, k)
			continue
		}
		if frames == nil {
			frames = make([]wire.Frame, len(e.Frames))
			for i, f := range e.Frames {
				frames[i] = wire.Frame{Bytes: f}
			}
		}
		reply.Items = append(reply.Items, wire.Item{Key: k, Encoding: e.Encoding, NFrames: len(frames), NBytes: e.NBytes})
		payload = append(payload, frames...)
		for _, f := range frames {
			size += f.Len + int64(len(f.Bytes))
		}
	}
	lim := w.cfg.limits()
	if n := 1 + len(payload); n > lim.MaxFrames || size > lim.MaxMessage {
		closeFrames(payload)
		// the reply would be refused by the reader (docs/protocol.md §3): say so, and let the
		// requester ask for fewer keys at a time (a worker's fetch splits its batch)
		return c.SendError(m.ID, wire.CodeFrameTooLarge, fmt.Sprintf(
			"the data for these %d keys is %d frames and %d bytes, over the limits of %d frames and %d bytes per message: ask for fewer keys at a time",
			len(reply.Items), n, size, lim.MaxFrames, lim.MaxMessage))
	}
	if len(reply.Items) > 0 {
		w.stats.transferOut.Add(1)
	}
	w.stats.bytesSent.Add(size)
	hdr, err := wire.EncodeHeader(reply)
	if err == nil && len(segs) > 0 {
		w.stats.shmOut.Add(int64(len(segs)))
		hdr, err = appendExt(hdr, "seg", segs)
	}
	if err != nil {
		closeFrames(payload)
		return err
	}
	return c.SendFrames(hdr, payload)
}

// segmentFrames returns the frames of a segment-backed value e (from GetRef) for sending: the
// segment's frames as regions of a duplicate of its descriptor each, which the connection
// sends with sendfile(2) and closes once written. The value's bytes thus go from the memfd's
// pages to the socket: no copy into this process's memory, and no wait for one before the
// first byte leaves (reading 200 MB out of a segment first took 55–135 ms, as long as the
// transfer itself, docs/performance.md). The segment is sealed, so its bytes cannot change
// while they are sent; the store may close its own descriptor meanwhile.
func segmentFrames(e Entry) ([]wire.Frame, error) {
	frames := make([]wire.Frame, len(e.Frames))
	for i, f := range e.Frames {
		frames[i] = wire.Frame{Bytes: f}
	}
	for _, p := range e.Seg.at {
		fd, err := e.Seg.dup()
		if err != nil {
			closeFrames(frames)
			return nil, err
		}
		frames[p.Frame] = wire.Frame{File: os.NewFile(uintptr(fd), "segment"), Off: p.Off, Len: p.Len}
	}
	return frames, nil
}

// closeFrames closes the files of frames that will not be sent.
func closeFrames(frames []wire.Frame) {
	for _, f := range frames {
		if f.File != nil {
			f.File.Close()
		}
	}
}

// servePut stores scattered values after checking the items against the frames. A client on
// this machine may pass a large value as a sealed memfd instead of its bytes (`seg`, as a peer
// does in a data answer, with its `shm_host`): the worker opens it through /proc and keeps it
// as the value's segment, so neither the socket nor a growing buffer carries it.
func (w *Worker) servePut(m *wire.Msg, hdr []byte, frames [][]byte) error {
	segs, err := decodeSegs(hdr)
	if err != nil {
		return fmt.Errorf("put_data: bad seg: %v", err)
	}
	if len(segs) > 0 {
		x, err := decodeGetDataExt(hdr)
		if err != nil {
			return fmt.Errorf("put_data: %v", err)
		}
		if !shmEnabled || x.Host == "" || x.Host != hostID() {
			return errors.New("put_data: segments are taken only from a client on this machine (shm_host differs)")
		}
	}
	rest := frames
	seen := make(map[string]bool, len(m.Items))
	for _, it := range m.Items {
		if it.Key == "" {
			return errors.New("put_data item with an empty key")
		}
		if seen[it.Key] {
			return fmt.Errorf("put_data has item %q twice", it.Key)
		}
		seen[it.Key] = true
		if !validEncoding(it.Encoding) {
			return fmt.Errorf("put_data item %q has unknown encoding %q", it.Key, it.Encoding)
		}
		if it.NFrames < 1 || it.NFrames > len(rest) {
			return fmt.Errorf("put_data item %q declares %d frames, %d left", it.Key, it.NFrames, len(rest))
		}
		if it.Encoding != wire.EncPickle && it.NFrames != 1 {
			return fmt.Errorf("put_data item %q: a %s value has exactly one frame", it.Key, it.Encoding)
		}
		rest = rest[it.NFrames:]
	}
	if len(rest) != 0 {
		return fmt.Errorf("put_data has %d frames beyond its items", len(rest))
	}
	opened := make(map[string]*Segment, len(segs))
	for i := range segs {
		ps := &segs[i]
		j, at := 0, frames
		for _, it := range m.Items {
			if it.Key == ps.Key {
				break
			}
			j++
			at = at[it.NFrames:]
		}
		if j == len(m.Items) || opened[ps.Key] != nil {
			closeSegments(opened)
			return fmt.Errorf("put_data: a segment for %q, which is not an item or has one already", ps.Key)
		}
		s, err := openPeerSegment(*ps, at[:m.Items[j].NFrames])
		if err != nil {
			closeSegments(opened)
			return fmt.Errorf("put_data: opening the client's segment for %q: %v", ps.Key, err)
		}
		opened[ps.Key] = s
	}
	w.stats.bytesRecv.Add(frameBytes(frames))
	for i, it := range m.Items {
		fs := frames[:it.NFrames:it.NFrames]
		if s := opened[it.Key]; s != nil {
			m.Items[i].NBytes = w.store.PutSegment(it.Key, it.Encoding, fs, s)
			w.stats.shmIn.Add(1)
		} else {
			w.store.Put(it.Key, it.Encoding, fs, nil)
		}
		frames = frames[it.NFrames:]
	}
	w.scattered(m.Items)
	return nil
}

func closeSegments(m map[string]*Segment) {
	for _, s := range m {
		s.close()
	}
}

// scattered readies tasks that were waiting for values a client just put here.
func (w *Worker) scattered(items []wire.Item) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, it := range items {
		if f := w.mu.fetches[it.Key]; f != nil && !f.inFlight {
			w.forgetFetchLocked(f)
			w.arrivedLocked(f)
		}
	}
	w.mu.cond.Broadcast()
}
