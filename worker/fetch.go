package worker

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/shoal-dev/shoal/internal/wire"
)

// fetch is one dependency this worker needs from its peers.
type fetch struct {
	key        string
	nbytes     int64
	holders    []string // peers still to try, in the scheduler's order
	tried      []string // peers that did not supply it
	dependents map[string]struct{}
	inFlight   bool
}

// needLocked registers that ts waits for dep, which dep.WhoHas may supply.
func (w *Worker) needLocked(key string, dep wire.Dep, ts *task) {
	f := w.mu.fetches[key]
	if f == nil {
		f = &fetch{key: key, nbytes: dep.NBytes, dependents: make(map[string]struct{})}
		w.mu.fetches[key] = f
		w.mu.fetchQueue = append(w.mu.fetchQueue, f)
	}
	f.dependents[ts.t.Key] = struct{}{}
	for _, h := range dep.WhoHas {
		if h != w.dataAddr && !slices.Contains(f.holders, h) && !slices.Contains(f.tried, h) {
			f.holders = append(f.holders, h)
		}
	}
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
		w.mu.active++
		w.mu.inFlight += bytes
		w.goFunc(func() { w.fetchFrom(peer, batch, bytes) })
	}
}

// fetchFrom performs one get_data request and files its outcome.
func (w *Worker) fetchFrom(peer string, batch []*fetch, declared int64) {
	keys := make([]string, len(batch))
	for i, f := range batch {
		keys[i] = f.key
	}
	got, err := w.peers.getData(w.ctx, peer, keys)
	if err != nil {
		w.log.Warn("fetching from peer failed", "peer", peer, "keys", len(keys), "err", err)
	}
	var added []wire.Item
	for _, it := range got {
		w.store.Put(it.item.Key, it.item.Encoding, it.frames, nil)
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
		f.holders = slices.DeleteFunc(f.holders, func(h string) bool { return h == peer })
		f.tried = append(f.tried, peer)
		if len(f.dependents) == 0 {
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
	tried := f.tried
	if len(tried) == 0 {
		tried = []string{""}
	}
	for _, peer := range tried {
		w.send(&wire.Msg{Op: wire.OpMissingData, Key: f.key, Worker: peer})
	}
	for k := range f.dependents {
		if ts := w.mu.tasks[k]; ts != nil && ts.state == stateFetching {
			w.dropTaskLocked(ts)
		}
	}
	w.log.Warn("dependency could not be fetched", "key", f.key, "tried", f.tried)
}

// received is one value from a data message.
type received struct {
	item   wire.Item
	frames [][]byte
}

// peerPool keeps a few idle data connections per peer.
type peerPool struct {
	w  *Worker
	mu struct {
		sync.Mutex
		idle   map[string][]*wire.Conn
		seq    uint64
		closed bool
	}
}

const maxIdlePerPeer = 2

func newPeerPool(w *Worker) *peerPool {
	p := &peerPool{w: w}
	p.mu.idle = make(map[string][]*wire.Conn)
	return p
}

func (p *peerPool) get(ctx context.Context, addr string) (*wire.Conn, uint64, error) {
	p.mu.Lock()
	p.mu.seq++
	id := p.mu.seq
	if conns := p.mu.idle[addr]; len(conns) > 0 {
		c := conns[len(conns)-1]
		p.mu.idle[addr] = conns[:len(conns)-1]
		p.mu.Unlock()
		return c, id, nil
	}
	p.mu.Unlock()
	cfg := p.w.cfg
	c, err := wire.Dial(ctx, addr, wire.DialOptions{Role: wire.RolePeer, Token: cfg.Token,
		TLS: cfg.ClientTLS, Limits: cfg.limits()})
	return c, id, err
}

func (p *peerPool) put(addr string, c *wire.Conn) {
	p.mu.Lock()
	if p.mu.closed || len(p.mu.idle[addr]) >= maxIdlePerPeer {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.mu.idle[addr] = append(p.mu.idle[addr], c)
	p.mu.Unlock()
}

func (p *peerPool) closeAll() {
	p.mu.Lock()
	p.mu.closed = true
	idle := p.mu.idle
	p.mu.idle = nil
	p.mu.Unlock()
	for _, conns := range idle {
		for _, c := range conns {
			c.Abort()
		}
	}
}

// getData asks addr for keys and returns the values it sent; keys it reported missing are
// simply absent. Frames are used as received, without copying.
func (p *peerPool) getData(ctx context.Context, addr string, keys []string) ([]received, error) {
	c, id, err := p.get(ctx, addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.Abort() })
	defer stop()
	if err := c.Send(&wire.Msg{Op: wire.OpGetData, ID: id, Keys: keys}); err != nil {
		c.Abort()
		return nil, err
	}
	m, frames, err := c.Recv()
	if err != nil {
		c.Abort()
		return nil, err
	}
	got, err := parseData(m, frames, id, keys)
	if err != nil {
		c.Abort()
		return nil, err
	}
	p.put(addr, c)
	p.w.stats.bytesRecv.Add(frameBytes(frames))
	return got, nil
}

// parseData checks a data reply against the request and splits its frames per item.
func parseData(m *wire.Msg, frames [][]byte, id uint64, keys []string) ([]received, error) {
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
	return out, nil
}
