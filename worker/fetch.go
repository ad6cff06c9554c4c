package worker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// fetch is one dependency this worker needs from its peers.
type fetch struct {
	key        string
	nbytes     int64
	holders    []string // peers still to try, in the scheduler's order
	tried      []string // peers that did not supply it
	causes     []string // for each of tried, why its transfer failed ("": it did not hold the value)
	busy       int      // tries refused as busy (the peer had no connection to spare)
	dependents map[string]struct{}
	inFlight   bool
	keep       bool // a copy the scheduler asked for (acquire_replicas): kept without a task
}

// maxBusyTries bounds how often a fetch is retried from a peer that refuses connections as
// busy (with backoff between tries, about a minute in all) before that counts as a failure.
const maxBusyTries = 16

// untried records that peer did not supply f (cause "": it did not hold it).
func (f *fetch) untried(peer, cause string) {
	f.holders = slices.DeleteFunc(f.holders, func(h string) bool { return h == peer })
	f.tried = append(f.tried, peer)
	f.causes = append(f.causes, cause)
}

// needLocked registers that ts waits for dep, which dep.WhoHas may supply.
func (w *Worker) needLocked(key string, dep wire.Dep, ts *task) {
	w.fetchLocked(key, dep).dependents[ts.t.Key] = struct{}{}
}

// fetchLocked returns the fetch of key, queued anew if there was none, with dep.WhoHas among
// the holders it has still to try.
func (w *Worker) fetchLocked(key string, dep wire.Dep) *fetch {
	f := w.mu.fetches[key]
	if f == nil {
		f = &fetch{key: key, nbytes: dep.NBytes, dependents: make(map[string]struct{})}
		w.mu.fetches[key] = f
		w.mu.fetchQueue = append(w.mu.fetchQueue, f)
	}
	for _, h := range dep.WhoHas {
		if h != w.dataAddr && !slices.Contains(f.holders, h) && !slices.Contains(f.tried, h) {
			f.holders = append(f.holders, h)
		}
	}
	return f
}

// handleAcquire fetches copies of values the scheduler asked this worker to hold (replicate,
// rebalance, retiring another worker). Each is stored and reported with add_keys like a
// fetched dependency; one no holder could supply is dropped (the scheduler asks again if it
// still wants it).
func (w *Worker) handleAcquire(deps []wire.Dep) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, dep := range deps {
		if !w.store.Has(dep.Key) {
			w.fetchLocked(dep.Key, dep).keep = true
		}
	}
	w.pumpFetchesLocked()
}

func (w *Worker) forgetFetchLocked(f *fetch) {
	delete(w.mu.fetches, f.key)
	if i := slices.Index(w.mu.fetchQueue, f); i >= 0 {
		w.mu.fetchQueue = slices.Delete(w.mu.fetchQueue, i, i+1)
	}
}

// pumpFetchesLocked starts get_data requests while the concurrency and byte limits allow,
// grouping queued keys held by the same peer into one request.
func (w *Worker) pumpFetchesLocked() {
	for w.mu.active < w.cfg.MaxConcurrentFetches && len(w.mu.fetchQueue) > 0 && !w.mu.closed {
		f := w.mu.fetchQueue[0]
		if len(f.holders) == 0 {
			w.mu.fetchQueue = w.mu.fetchQueue[1:]
			w.fetchFailedLocked(f)
			continue
		}
		if w.mu.inFlight > 0 && w.mu.inFlight+f.nbytes > w.cfg.MaxFetchBytes {
			return
		}
		peer := f.holders[0]
		batch := []*fetch{f}
		bytes := f.nbytes
		rest := w.mu.fetchQueue[:0]
		for _, g := range w.mu.fetchQueue[1:] {
			if slices.Contains(g.holders, peer) && w.mu.inFlight+bytes+g.nbytes <= w.cfg.MaxFetchBytes {
				batch = append(batch, g)
				bytes += g.nbytes
			} else {
				rest = append(rest, g)
			}
		}
		clear(w.mu.fetchQueue[len(rest):])
		w.mu.fetchQueue = rest
		for _, g := range batch {
			g.inFlight = true
		}
		var land map[string]bool
		for _, g := range batch {
			if w.prefillsLocked(g) {
				if land == nil {
					land = make(map[string]bool)
				}
				land[g.key] = true
			}
		}
		w.mu.active++
		w.mu.inFlight += bytes
		w.goFunc(func() { w.fetchFrom(peer, batch, bytes, land) })
	}
}

// prefillsLocked tells whether f's large frames should be prefilled into an executor's windows
// (prefill.go): every task waiting for it here runs in a Python executor.
func (w *Worker) prefillsLocked(f *fetch) bool {
	if !shmEnabled || len(f.dependents) == 0 {
		return false
	}
	for k := range f.dependents {
		if ts := w.mu.tasks[k]; ts == nil || ts.t.Kind != graph.KindPy {
			return false
		}
	}
	return true
}

// PeerGone tells the worker that the peer serving data at addr left the cluster (the scheduler
// removed it, or gossip said so): fetches from it in flight are cancelled at once, and queued
// ones try other holders or are reported missing, instead of waiting for timeouts.
func (w *Worker) PeerGone(addr string) {
	w.peers.gone(addr)
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.mu.fetches {
		if !f.inFlight && slices.Contains(f.holders, addr) {
			f.untried(addr, "") // gone, like its values: lineage recomputes them
		}
	}
	w.pumpFetchesLocked()
}

// fetchFrom performs one get_data request and files its outcome.
func (w *Worker) fetchFrom(peer string, batch []*fetch, declared int64, land map[string]bool) {
	keys := make([]string, len(batch))
	for i, f := range batch {
		keys[i] = f.key
	}
	start := time.Now()
	var ex *executor
	if len(land) > 0 {
		ex = w.py.prefillTarget()
	}
	got, err := w.peers.getDataSized(w.peers.context(peer), peer, keys, declared, ex, land)
	w.peers.outcome(peer, err)
	if err != nil {
		w.log.Warn("fetching from peer failed", "peer", peer, "keys", len(keys), "err", err)
	} else if w.log.Enabled(context.Background(), slog.LevelDebug) {
		var n int64
		for _, it := range got {
			n += it.item.NBytes
		}
		took := time.Since(start)
		w.log.Debug("fetched from peer", "peer", peer, "keys", len(keys), "bytes", n, "took", took,
			"mb_per_s", int(float64(n)/max(took.Seconds(), 1e-9)/1e6))
	}
	var added []wire.Item
	for _, it := range got {
		if it.seg != nil {
			w.store.PutSegment(it.item.Key, it.item.Encoding, it.frames, it.seg)
			w.stats.shmIn.Add(1)
		} else {
			w.store.Put(it.item.Key, it.item.Encoding, it.frames, nil)
		}
		added = append(added, wire.Item{Key: it.item.Key, Encoding: it.item.Encoding, NBytes: it.item.NBytes})
	}
	if len(added) > 0 {
		w.stats.transfersIn.Add(1)
		w.send(&wire.Msg{Op: wire.OpAddKeys, Items: added})
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	w.mu.active--
	w.mu.inFlight -= declared
	arrived := make(map[string]bool, len(got))
	for _, it := range got {
		arrived[it.item.Key] = true
	}
	for _, f := range batch {
		f.inFlight = false
		if w.mu.fetches[f.key] != f {
			continue
		}
		if arrived[f.key] {
			w.arrivedLocked(f)
			continue
		}
		switch {
		case isBusy(err) && f.busy < maxBusyTries:
			f.busy++ // the peer is fine but full: ask it again, after the backoff
		case err == nil, errors.Is(err, errPeerGone):
			f.untried(peer, "") // it does not hold the value, or is gone: lineage recomputes it
		default:
			f.untried(peer, err.Error())
		}
		if len(f.dependents) == 0 && (!f.keep || len(f.holders) == 0) {
			w.forgetFetchLocked(f)
		} else if len(f.holders) > 0 {
			w.mu.fetchQueue = append(w.mu.fetchQueue, f)
		} else {
			w.fetchFailedLocked(f)
		}
	}
	w.pumpFetchesLocked()
	w.mu.cond.Broadcast()
}

// arrivedLocked marks a dependency as present, readying the tasks that waited only for it.
func (w *Worker) arrivedLocked(f *fetch) {
	delete(w.mu.fetches, f.key)
	for k := range f.dependents {
		ts := w.mu.tasks[k]
		if ts == nil || ts.state != stateFetching {
			continue
		}
		delete(ts.waiting, f.key)
		if len(ts.waiting) == 0 {
			w.pushReadyLocked(ts)
		}
	}
}

// fetchFailedLocked handles a dependency no holder could supply: the scheduler is told which
// peers were tried and every task that needed it is dropped (the scheduler re-sends them).
func (w *Worker) fetchFailedLocked(f *fetch) {
	w.stats.fetchFailures.Add(1)
	delete(w.mu.fetches, f.key)
	if len(f.tried) == 0 {
		w.send(&wire.Msg{Op: wire.OpMissingData, Key: f.key})
	}
	for i, peer := range f.tried {
		w.send(&wire.Msg{Op: wire.OpMissingData, Key: f.key, Worker: peer, Message: f.causes[i]})
	}
	for k := range f.dependents {
		if ts := w.mu.tasks[k]; ts != nil && ts.state == stateFetching {
			w.dropTaskLocked(ts)
		}
	}
	w.log.Warn("dependency could not be fetched", "key", f.key, "tried", f.tried, "causes", f.causes)
}

// received is one value from a data message.
type received struct {
	item   wire.Item
	frames [][]byte
	ps     *peerSeg // the peer's description of the segment holding some frames (empty in frames)
	seg    *Segment // that segment, opened
}

// peerPool keeps a few idle data connections per peer.
type peerPool struct {
	w    *Worker
	bufs *bufPool
	mu   struct {
		sync.Mutex
		idle   map[string][]idleConn
		seq    uint64
		closed bool
		noShm  map[string]bool // peers whose segments could not be opened: ask them for bytes
		failed map[string]peerFailures
		ctxs   map[string]peerCtx // per peer: cancelled when the peer leaves the cluster
	}
}

type peerCtx struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// errPeerGone is the cause of requests cut off because their peer left the cluster.
var errPeerGone = errors.New("the peer left the cluster")

// isBusy tells a peer that refused the connection for want of a free one (status busy).
func isBusy(err error) bool {
	var herr *wire.HandshakeError
	return errors.As(err, &herr) && herr.Status == wire.StatusBusy
}

// context is the context of requests to addr: the worker's, cancelled early by gone(addr).
func (p *peerPool) context(addr string) context.Context {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc, ok := p.mu.ctxs[addr]
	if !ok {
		pc.ctx, pc.cancel = context.WithCancelCause(p.w.ctx)
		p.mu.ctxs[addr] = pc
	}
	return pc.ctx
}

// gone cuts addr off: its requests in flight are cancelled and its idle connections closed.
func (p *peerPool) gone(addr string) {
	p.mu.Lock()
	pc, ok := p.mu.ctxs[addr]
	delete(p.mu.ctxs, addr)
	delete(p.mu.failed, addr)
	idle := p.mu.idle[addr]
	delete(p.mu.idle, addr)
	p.mu.Unlock()
	if ok {
		pc.cancel(errPeerGone)
	}
	for _, ic := range idle {
		ic.c.close()
	}
}

// peerFailures counts a peer's consecutive failed requests: the next request to it waits
// retryDelay(n) after the last failure, so a peer that keeps failing is not asked in a hot loop.
type peerFailures struct {
	n    int
	last time.Time
}

// Backoff of requests to a failing peer: doubling from minPeerBackoff, at most maxPeerBackoff.
const (
	minPeerBackoff = 50 * time.Millisecond
	maxPeerBackoff = 5 * time.Second
)

func retryDelay(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	return min(minPeerBackoff<<min(n-1, 16), maxPeerBackoff)
}

// outcome records how a request to addr went.
func (p *peerPool) outcome(addr string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, errPeerGone) {
		delete(p.mu.failed, addr)
		return
	}
	f := p.mu.failed[addr]
	p.mu.failed[addr] = peerFailures{n: f.n + 1, last: time.Now()}
}

// backoff waits until a request to addr is due (at once unless it failed recently).
func (p *peerPool) backoff(ctx context.Context, addr string) error {
	p.mu.Lock()
	f := p.mu.failed[addr]
	p.mu.Unlock()
	wait := time.Until(f.last.Add(retryDelay(f.n)))
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// dialTimeout bounds connecting to a peer and its handshake: an unreachable host is given up
// on after this, not after the kernel's minutes of SYN retries.
var dialTimeout = 10 * time.Second

// maxIdlePerPeer bounds the idle connections kept per peer beyond MaxConcurrentFetches: a
// worker keeps as many as it may have in flight, so that bursts of small fetches (a tree
// reduction) reuse connections instead of dialing and handshaking each time.
const maxIdlePerPeer = 2

// peerIdleTimeout bounds how long a peer may send nothing while answering get_data: a peer
// that hangs without dying (stopped, or its machine gone without a reset) must not stall the
// fetch, and the dependency is then fetched from another holder. It is a bound on silence, not
// on the whole transfer, so values of any size can arrive over slow links.
var peerIdleTimeout = 60 * time.Second

func newPeerPool(w *Worker) *peerPool {
	p := &peerPool{w: w, bufs: newBufPool(poolBytesFor(w.cfg.MemoryLimit))}
	p.mu.idle = make(map[string][]idleConn)
	p.mu.noShm = make(map[string]bool)
	p.mu.failed = make(map[string]peerFailures)
	p.mu.ctxs = make(map[string]peerCtx)
	return p
}

// idleConn is a pooled connection and since when it has been idle.
type idleConn struct {
	c     *peerConn
	since time.Time
}

// maxPooledIdle: a pooled connection idle this long is closed rather than reused; peers drop
// connections idle for --data-idle-timeout (10 min), and a pool need not hold them that long.
const maxPooledIdle = time.Minute

// get returns a connection to addr: a pooled one unless fresh (pooled tells which), or a new
// one, after the backoff if addr failed lately.
func (p *peerPool) get(ctx context.Context, addr string, fresh bool) (c *peerConn, id uint64, pooled bool, err error) {
	p.mu.Lock()
	p.mu.seq++
	id = p.mu.seq
	conns := p.mu.idle[addr]
	if n := len(conns); n > 0 && !fresh && time.Since(conns[n-1].since) < maxPooledIdle {
		p.mu.idle[addr] = conns[:n-1]
		p.mu.Unlock()
		return conns[n-1].c, id, true, nil
	}
	delete(p.mu.idle, addr) // the most recently used one is stale (or unwanted): all are
	p.mu.Unlock()
	for _, ic := range conns {
		ic.c.close()
	}
	if err := p.backoff(ctx, addr); err != nil {
		return nil, id, false, err
	}
	cfg := p.w.cfg
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	c, err = dialPeer(dctx, addr, cfg.Token, cfg.ClientTLS, cfg.limits())
	if err != nil && ctx.Err() == nil && dctx.Err() != nil {
		err = fmt.Errorf("connecting to peer %s: no answer within %v: %w", addr, dialTimeout, err)
	}
	return c, id, false, err
}

func (p *peerPool) put(addr string, c *peerConn) {
	p.mu.Lock()
	if p.mu.closed || len(p.mu.idle[addr]) >= max(maxIdlePerPeer, p.w.cfg.MaxConcurrentFetches) {
		p.mu.Unlock()
		c.close()
		return
	}
	p.mu.idle[addr] = append(p.mu.idle[addr], idleConn{c, time.Now()})
	p.mu.Unlock()
}

func (p *peerPool) closeAll() {
	p.mu.Lock()
	p.mu.closed = true
	idle := p.mu.idle
	p.mu.idle = nil
	p.mu.Unlock()
	for _, conns := range idle {
		for _, ic := range conns {
			ic.c.close()
		}
	}
}

// getData asks addr for keys and returns the values it sent; keys it reported missing are
// simply absent. Frames are used as received, without copying; large ones are read into
// recycled buffers (bufPool).
//
// A peer on this machine hands segment-backed values over as descriptors (segment.go) when
// asked to. A value whose segment cannot be opened is fetched again as bytes. When the cause
// is this worker's access to the peer's descriptors (permission, no such process in this
// /proc) and not the value going away meanwhile (spilled or dropped), this peer is not asked
// for descriptors again.
func (p *peerPool) getData(ctx context.Context, addr string, keys []string) ([]received, error) {
	return p.getDataSized(ctx, addr, keys, 0, nil, nil)
}

// getDataSized is getData for keys whose sizes add up to expect bytes (0: unknown), which
// bounds the frame sizes trusted enough to be read into a buffer of their declared length:
// a larger one grows as its bytes arrive (a peer's declared length is a claim). The large
// frames of the keys in land are copied into ex's windows as they arrive
// (prefill.go).
func (p *peerPool) getDataSized(ctx context.Context, addr string, keys []string, expect int64,
	ex *executor, land map[string]bool) ([]received, error) {
	trust := int64(256 << 20)
	if expect > 0 {
		trust = 2*expect + 1<<20
	}
	alloc := func(n int) []byte {
		if int64(n) > trust {
			return nil
		}
		return p.bufs.get(n)
	}
	p.mu.Lock()
	shm := shmEnabled && hostID() != "" && !p.mu.noShm[addr]
	p.mu.Unlock()
	dest := fetchDest{alloc: alloc, land: land}
	if ex != nil && len(land) > 0 {
		dest.prefill = &ex.shm
	}
	got, retry, blocked, err := p.getDataVia(ctx, addr, keys, shm, dest, false)
	if err != nil || len(retry) == 0 {
		return got, err
	}
	if blocked != nil {
		p.mu.Lock()
		p.mu.noShm[addr] = true
		p.mu.Unlock()
		p.w.log.Info("cannot open a peer's shared-memory segments; fetching its values over TCP from now on",
			"peer", addr, "err", blocked)
	}
	more, _, _, err := p.getDataVia(ctx, addr, retry, false, dest, false)
	return append(got, more...), err
}

// fetchDest says where a get_data answer's payload frames go: into alloc's buffers, and
// copied into the windows of prefill as they arrive for the keys in land (prefill.go).
type fetchDest struct {
	alloc   func(int) []byte
	prefill *execWindows // nil: none
	land    map[string]bool
}

// getDataVia is one get_data request (split in halves when the answer would be too large),
// asking for segment descriptors when shm is set, on a new connection when fresh; retry lists
// the keys whose segments could not be opened, blocked is set when a failure means none of
// that peer's can be (segmentsBlocked). Payload frames are read where dest says.
func (p *peerPool) getDataVia(ctx context.Context, addr string, keys []string, shm bool, dest fetchDest,
	fresh bool) (got []received, retry []string, blocked, err error) {
	c, id, pooled, err := p.get(ctx, addr, fresh)
	if err != nil {
		return nil, nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.close() })
	defer stop()
	hdr, err := wire.EncodeHeader(&wire.Msg{Op: wire.OpGetData, ID: id, Keys: keys})
	if err == nil && shm {
		if hdr, err = appendExt(hdr, "shm", 1); err == nil {
			hdr, err = appendExt(hdr, "shm_host", hostID())
		}
	}
	if err != nil { // cannot happen with a header we made
		p.put(addr, c)
		return nil, nil, nil, err
	}
	wdest := wire.Dest{Alloc: dest.alloc}
	var pf *prefills
	if dest.prefill != nil {
		pf = newPrefills(dest.prefill, dest.land, dest.alloc)
		wdest.Sink = pf.Sink
	}
	m, segs, frames, err := c.request(hdr, wdest)
	if err != nil {
		pf.finish(nil)
		c.close()
		if ctx.Err() != nil {
			return nil, nil, nil, context.Cause(ctx)
		}
		if pooled { // the peer may have closed it while it sat in the pool: once more, on a new one
			stop()
			return p.getDataVia(ctx, addr, keys, shm, dest, true)
		}
		return nil, nil, nil, err
	}
	if m.Op == wire.OpError && m.Code == wire.CodeFrameTooLarge && m.ID == id && len(keys) > 1 {
		// the values do not fit in one message: ask for them in two halves
		pf.finish(nil)
		if stop() {
			p.put(addr, c)
		}
		half := len(keys) / 2
		first, retry, blocked, err := p.getDataVia(ctx, addr, keys[:half], shm, dest, false)
		if err != nil {
			return first, retry, blocked, err
		}
		second, retry2, blocked2, err := p.getDataVia(ctx, addr, keys[half:], shm, dest, false)
		if blocked == nil {
			blocked = blocked2
		}
		return append(first, second...), append(retry, retry2...), blocked, err
	}
	if len(segs) > 0 && !shm {
		err = errors.New("peer sent segment descriptors without being asked")
	} else {
		got, err = parseData(m, frames, id, keys, segs)
	}
	if err != nil {
		pf.finish(nil)
		c.close()
		return nil, nil, nil, err
	}
	p.put(addr, c)
	p.w.stats.bytesRecv.Add(frameBytes(frames))
	kept := got[:0]
	for _, r := range got {
		if r.ps != nil {
			if r.seg, err = openPeerSegment(*r.ps, r.frames); err != nil {
				p.w.log.Debug("cannot open a peer's segment", "peer", addr, "key", r.item.Key, "err", err)
				retry = append(retry, r.item.Key)
				if blocked == nil && segmentsBlocked(err, r.ps.PID) {
					blocked = err
				}
				continue
			}
		}
		kept = append(kept, r)
	}
	pf.finish(kept)
	return kept, retry, blocked, nil
}

// peerConn is a data connection to a peer for get_data requests, one at a time. It speaks
// the framing of docs/protocol.md §3 itself (rather than through wire.Conn) so that it can
// choose where payload frames are read into and bound how long the peer may stay silent.
type peerConn struct {
	addr string
	nc   net.Conn
	br   *bufio.Reader
	lim  wire.Limits
	once sync.Once
}

// dialPeer connects to a peer's data port and performs the handshake as role peer.
func dialPeer(ctx context.Context, addr, token string, tlsCfg *tls.Config, lim wire.Limits) (*peerConn, error) {
	nc, err := wire.DialRaw(ctx, addr, wire.DialOptions{Role: wire.RolePeer, Token: token, TLS: tlsCfg})
	if err != nil {
		return nil, err
	}
	if lim.MaxFrames == 0 {
		lim = wire.DefaultLimits()
	}
	c := &peerConn{addr: addr, nc: nc, lim: lim}
	c.br = bufio.NewReaderSize(idleReader{c}, 64<<10)
	return c, nil
}

// idleReader reads from the connection with a fresh peerIdleTimeout deadline for every read.
type idleReader struct{ c *peerConn }

func (r idleReader) Read(b []byte) (int, error) {
	r.c.nc.SetReadDeadline(time.Now().Add(peerIdleTimeout))
	n, err := r.c.nc.Read(b)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = fmt.Errorf("peer %s sent nothing for %v while answering get_data: %w", r.c.addr, peerIdleTimeout, err)
	}
	return n, err
}

// request sends a message with header hdr (no payload) and reads the answer, with the
// segments a data answer describes; payload frames are read where dest says.
func (c *peerConn) request(hdr []byte, dest wire.Dest) (*wire.Msg, []peerSeg, [][]byte, error) {
	out := make([]byte, 0, 12+len(hdr))
	out = append(out, 0, 0, 0, 1)
	out = appendU64(out, uint64(len(hdr)))
	out = append(out, hdr...)
	c.nc.SetWriteDeadline(time.Now().Add(peerIdleTimeout))
	if _, err := c.nc.Write(out); err != nil {
		return nil, nil, nil, err
	}
	frames, err := wire.ReadFramesTo(c.br, c.lim, dest)
	if err != nil {
		return nil, nil, nil, err
	}
	reply, err := wire.DecodeHeader(frames[0])
	if err != nil {
		return nil, nil, nil, err
	}
	var segs []peerSeg
	if reply.Op == wire.OpData {
		if segs, err = decodeSegs(frames[0]); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: data answer: %v", wire.ErrProtocol, err)
		}
	}
	return reply, segs, frames[1:], nil
}

// decodeSegs reads the segments a header describes (its seg field: a data answer's, or a
// client's put_data), or none.
func decodeSegs(hdr []byte) ([]peerSeg, error) {
	if !bytes.Contains(hdr, []byte("seg")) {
		return nil, nil
	}
	var segs []peerSeg
	raw, ok, err := wire.RawField(hdr, "seg")
	if err == nil && ok {
		err = wire.UnmarshalExt(raw, &segs)
	}
	return segs, err
}

func (c *peerConn) close() { c.once.Do(func() { c.nc.Close() }) }

// parseData checks a data reply against the request and splits its frames per item, pairing
// items with the segments segs describes.
func parseData(m *wire.Msg, frames [][]byte, id uint64, keys []string, segs []peerSeg) ([]received, error) {
	if m.Op == wire.OpError {
		return nil, fmt.Errorf("peer refused get_data: %s: %s", m.Code, m.Message)
	}
	if m.Op != wire.OpData || m.ID != id {
		return nil, fmt.Errorf("unexpected reply %q (id %d) to get_data %d", m.Op, m.ID, id)
	}
	out := make([]received, 0, len(m.Items))
	for _, it := range m.Items {
		if it.NFrames < 1 || it.NFrames > len(frames) {
			return nil, fmt.Errorf("item %q declares %d frames, %d left", it.Key, it.NFrames, len(frames))
		}
		if !slices.Contains(keys, it.Key) || !validEncoding(it.Encoding) {
			return nil, fmt.Errorf("unexpected item %q (encoding %q)", it.Key, it.Encoding)
		}
		fs := frames[:it.NFrames:it.NFrames]
		frames = frames[it.NFrames:]
		it.NBytes = frameBytes(fs)
		out = append(out, received{item: it, frames: fs})
	}
	if len(frames) != 0 {
		return nil, fmt.Errorf("%d frames beyond the items", len(frames))
	}
	for i := range segs {
		ps := &segs[i]
		j := slices.IndexFunc(out, func(r received) bool { return r.item.Key == ps.Key })
		if j < 0 || out[j].ps != nil {
			return nil, fmt.Errorf("a segment for %q, which is not an item of the answer or has one already", ps.Key)
		}
		for _, p := range ps.Frames {
			if p.Frame < 0 || p.Frame >= len(out[j].frames) || len(out[j].frames[p.Frame]) != 0 || p.Len < 0 {
				return nil, fmt.Errorf("bad segment placement [%d, %d, %d] for item %q", p.Frame, p.Off, p.Len, ps.Key)
			}
			out[j].item.NBytes += p.Len
		}
		out[j].ps = ps
	}
	return out, nil
}
