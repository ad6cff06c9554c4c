package shoal

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Options configure Connect.
type Options struct {
	Token   string
	TLS     *tls.Config
	Timeout time.Duration // connect timeout; default 10 s
	Logger  *slog.Logger
	// ReconnectTimeout is how long a client whose connection broke (a cut link, a scheduler
	// restarted on its journal) tries to connect again, with backoff, before its futures fail
	// with ErrClosed; meanwhile they stay pending. On reconnecting it resumes its session:
	// the scheduler is told every key it holds, and their states follow. 0: 60 s; < 0: fail
	// at once.
	ReconnectTimeout time.Duration
	// FetchTimeout bounds how long fetching a finished future's value (Result, Gather) looks
	// for it when its worker died or dropped it: on other replicas, or while the scheduler
	// recomputes it. 0: 5 min (as the Python client's fetch_timeout).
	FetchTimeout time.Duration
}

// ErrClosed is returned once the client is closed or the scheduler has gone away.
var ErrClosed = errors.New("shoal: connection to scheduler closed")

// Client is a connection to a scheduler.
type Client struct {
	opts      Options
	addr      string
	conn      atomic.Pointer[wire.Conn] // the current connection (replaced on reconnect)
	id        atomic.Int64
	dashboard string
	log       *slog.Logger
	closing   atomic.Bool

	mu struct {
		sync.Mutex
		futures map[string]*keyState // by key
		pending map[uint64]chan *wire.Msg
		graphs  map[uint64][]string // update_graph id → keys, until resolved
		nextID  uint64
		err     error
		// sent keeps the update_graph messages written last (at most retainGraphTasks
		// tasks and retainGraphBytes): a scheduler that died before reading them asks for
		// them when this client resumes (resumed lists keys it does not know)
		sent      []keptGraph
		sentTasks int
		sentBytes int
		lastGraph uint64 // the id of the last update_graph written
		resumedAt uint64 // lastGraph when the current connection's resume was sent
		// resuming is open from a reconnect's resume until its answer is handled (and the
		// graphs it asked for sent again): Submit waits, so that no graph overtakes them
		resuming chan struct{}
	}
	// sendMu orders what must reach the scheduler in order: graphs in their id order, a
	// resume and what it asks to send again, releases after the wants they undo
	sendMu sync.Mutex
	data   *dataPool
	done   chan struct{}
}

type keyState struct {
	refs    int
	done    chan struct{}
	closed  bool
	res     keyResult // what the key_state that resolved it said
	waiters []func()  // called once, outside the lock, when done closes (AsCompleted, progress)
}

// onDone calls fn once the key is final: at once (in this goroutine) if it already is,
// otherwise from the client's reader goroutine, so fn must not block.
func (c *Client) onDone(ks *keyState, fn func()) {
	c.mu.Lock()
	if ks.closed {
		c.mu.Unlock()
		fn()
		return
	}
	ks.waiters = append(ks.waiters, fn)
	c.mu.Unlock()
}

// closeLocked marks ks final and returns the callbacks to run once the lock is released.
func (ks *keyState) closeLocked(r keyResult) []func() {
	ks.res = r
	ks.closed = true
	close(ks.done)
	w := ks.waiters
	ks.waiters = nil
	return w
}

func runAll(fns []func()) {
	for _, fn := range fns {
		fn()
	}
}

// keyResult is the part of a key_state a future needs (not the whole header: a client may
// hold a million futures).
type keyResult struct {
	state  string
	worker string
	err    *wire.Error
}

// retainGraphTasks and retainGraphBytes bound the update_graph messages a client keeps to
// send again (docs/protocol.md, resume): their tasks, and their payloads, byte literals and
// functions.
const (
	retainGraphTasks = 100_000
	retainGraphBytes = 256 << 20
)

// graphBytes is what keeping an update_graph costs, roughly.
func graphBytes(m *wire.Msg) int {
	n := 0
	for i := range m.Tasks {
		n += len(m.Tasks[i].Payload)
		for _, a := range m.Tasks[i].Args {
			if b, ok := a.Val.([]byte); ok {
				n += len(b)
			}
		}
	}
	for _, b := range m.Funcs {
		n += len(b)
	}
	return n
}

// keptGraph is an update_graph kept to send again, with its graphBytes.
type keptGraph struct {
	m     *wire.Msg
	bytes int
}

// keepSentLocked keeps a written update_graph (the scheduler may die before reading it),
// dropping the oldest beyond the bounds.
func (c *Client) keepSentLocked(m *wire.Msg) {
	c.mu.lastGraph = max(c.mu.lastGraph, m.ID)
	g := keptGraph{m: m, bytes: graphBytes(m)}
	c.mu.sent = append(c.mu.sent, g)
	c.mu.sentTasks += len(m.Tasks)
	c.mu.sentBytes += g.bytes
	tasks, bytes, drop := c.mu.sentTasks, c.mu.sentBytes, 0
	for (tasks > retainGraphTasks || bytes > retainGraphBytes) && drop < len(c.mu.sent)-1 {
		tasks -= len(c.mu.sent[drop].m.Tasks)
		bytes -= c.mu.sent[drop].bytes
		drop++
	}
	c.forgetSentLocked(drop)
}

// forgetSentLocked drops the n oldest kept graphs.
func (c *Client) forgetSentLocked(n int) {
	for _, g := range c.mu.sent[:n] {
		c.mu.sentTasks -= len(g.m.Tasks)
		c.mu.sentBytes -= g.bytes
	}
	c.mu.sent = slices.Delete(c.mu.sent, 0, n)
}

// sendUnread answers a resumed that lists keys the scheduler does not know: the graphs kept
// that it never read (after id read, written before the resume) go again, then the keys are
// wanted again, so that those no graph defines are reported lost, and what those graphs want
// that no future holds any more (released since) is released again.
func (c *Client) sendUnread(read uint64, keys []string) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	upTo := c.mu.resumedAt
	drop := 0 // the graphs the scheduler read are never needed again
	for drop < len(c.mu.sent) && c.mu.sent[drop].m.ID <= read {
		drop++
	}
	c.forgetSentLocked(drop)
	var again []*wire.Msg
	var unheld []string
	for _, g := range c.mu.sent {
		if m := g.m; m.ID <= upTo {
			again = append(again, m)
			for _, k := range m.Wanted {
				if _, ok := c.mu.futures[k]; !ok {
					unheld = append(unheld, k)
				}
			}
		}
	}
	held := keys[:0:0]
	for _, k := range keys { // a future released since the resume is not wanted again
		if _, ok := c.mu.futures[k]; ok {
			held = append(held, k)
		}
	}
	keys = held
	c.mu.Unlock()
	c.log.Warn("the scheduler had not read graphs this client sent before it went away; sending those kept again",
		"read_up_to", read, "sending_again", len(again), "unknown_keys", len(keys))
	conn := c.conn.Load()
	for _, m := range again {
		if conn.Send(m) != nil {
			return // broke again: the next resume starts over
		}
	}
	if len(keys) > 0 && conn.Send(&wire.Msg{Op: wire.OpWanted, Keys: keys}) != nil {
		return
	}
	if len(unheld) > 0 {
		conn.Send(&wire.Msg{Op: wire.OpReleaseKeys, Keys: unheld})
	}
}

// resumed ends the resume of a reconnect: Submit may send again.
func (c *Client) resumed() {
	c.mu.Lock()
	gate := c.mu.resuming
	c.mu.resuming = nil
	c.mu.Unlock()
	if gate != nil {
		close(gate)
	}
}

// Connect dials the scheduler's control address and waits for its welcome.
func Connect(ctx context.Context, addr string, o Options) (*Client, error) {
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ReconnectTimeout == 0 {
		o.ReconnectTimeout = time.Minute
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 5 * time.Minute
	}
	conn, m, err := dialScheduler(ctx, addr, o, o.Timeout)
	if err != nil {
		return nil, err
	}
	c := &Client{opts: o, addr: addr, dashboard: m.Dashboard, log: o.Logger, done: make(chan struct{})}
	c.conn.Store(conn)
	c.id.Store(m.Client)
	c.mu.futures = map[string]*keyState{}
	c.mu.pending = map[uint64]chan *wire.Msg{}
	c.mu.graphs = map[uint64][]string{}
	c.data = newDataPool(o)
	go c.readLoop()
	return c, nil
}

// dialScheduler connects and reads the welcome.
func dialScheduler(ctx context.Context, addr string, o Options, timeout time.Duration) (*wire.Conn, *wire.Msg, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := wire.Dial(dctx, addr, wire.DialOptions{Role: wire.RoleClient, Token: o.Token, TLS: o.TLS})
	if err != nil {
		return nil, nil, fmt.Errorf("shoal: connect to %s: %w", addr, err)
	}
	stop := context.AfterFunc(dctx, func() { conn.Abort() })
	defer stop()
	m, _, err := conn.Recv()
	if err == nil && m.Op == wire.OpError {
		err = wire.Errorf(m.Code, m.Message)
	}
	if err != nil || m.Op != wire.OpWelcome {
		conn.Close()
		return nil, nil, fmt.Errorf("shoal: no welcome from scheduler at %s: %v", addr, err)
	}
	return conn, m, nil
}

// DashboardURL is the scheduler's dashboard, or "".
func (c *Client) DashboardURL() string { return c.dashboard }

// Close releases every future and closes all connections.
func (c *Client) Close() error {
	c.closing.Store(true)
	c.conn.Load().Close()
	<-c.done
	c.data.close()
	return nil
}

func (c *Client) readLoop() {
	defer close(c.done)
	for {
		m, _, err := c.conn.Load().Recv()
		if err != nil {
			if c.closing.Load() || c.opts.ReconnectTimeout < 0 || !c.reconnect(err) {
				c.fail(err)
				return
			}
			continue
		}
		switch m.Op {
		case wire.OpResumed:
			c.id.Store(m.Client)
			if len(m.Keys) > 0 {
				go func() { c.sendUnread(uint64(max(m.N, 0)), m.Keys); c.resumed() }()
			} else {
				c.resumed()
			}
		case wire.OpKeyState:
			c.resolve(m.Key, keyResult{state: m.State, worker: m.Worker, err: m.Error})
			wire.ReleaseMsg(m)
		case wire.OpGraphRejected:
			c.mu.Lock()
			delete(c.mu.graphs, m.ID)
			c.mu.Unlock()
			for _, k := range m.Keys {
				c.reject(k, keyResult{state: "erred", err: m.Error})
			}
		case wire.OpError:
			if m.ID != 0 && c.reply(m) {
				continue
			}
			c.log.Warn("scheduler reported an error", "code", m.Code, "message", m.Message)
		default:
			c.reply(m)
		}
	}
}

func (c *Client) reply(m *wire.Msg) bool {
	c.mu.Lock()
	ch, ok := c.mu.pending[m.ID]
	delete(c.mu.pending, m.ID)
	c.mu.Unlock()
	if ok {
		ch <- m
	}
	return ok
}

func (c *Client) fail(err error) {
	var cbs []func()
	c.mu.Lock()
	c.mu.err = fmt.Errorf("%w: %v", ErrClosed, err)
	for _, ks := range c.mu.futures {
		if !ks.closed {
			cbs = append(cbs, ks.closeLocked(keyResult{state: "lost", err: wire.Errorf(wire.CodeLost, c.mu.err.Error())})...)
		}
	}
	for id, ch := range c.mu.pending {
		close(ch)
		delete(c.mu.pending, id)
	}
	c.mu.Unlock()
	c.resumed() // Submit waiting for a resume returns the error
	runAll(cbs)
}

// reconnect connects again after the connection broke, with backoff, for ReconnectTimeout,
// and resumes the session: the scheduler is told every key the client holds (their states
// follow as key_state). Requests waiting for a reply fail with ErrClosed. It reports false
// when the time ran out or the client is closing.
func (c *Client) reconnect(cause error) bool {
	c.mu.Lock()
	for id, ch := range c.mu.pending {
		close(ch)
		delete(c.mu.pending, id)
	}
	c.mu.Unlock()
	c.log.Warn("lost the scheduler: connecting again; futures stay pending", "scheduler", c.addr, "cause", cause,
		"for_up_to", c.opts.ReconnectTimeout)
	deadline := time.Now().Add(c.opts.ReconnectTimeout)
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		if c.closing.Load() {
			return false
		}
		conn, _, err := dialScheduler(context.Background(), c.addr, c.opts, min(c.opts.Timeout, 2*time.Second))
		if err == nil {
			c.sendMu.Lock() // no graph goes between the resume and what its answer asks for
			c.mu.Lock()
			keys := make([]string, 0, len(c.mu.futures))
			for k := range c.mu.futures {
				keys = append(keys, k)
			}
			last := c.mu.lastGraph
			c.mu.resumedAt = last
			old := c.mu.resuming
			c.mu.resuming = make(chan struct{})
			c.mu.Unlock()
			if old != nil {
				close(old) // its waiters find the new one
			}
			err = conn.Send(&wire.Msg{Op: wire.OpResume, ID: 0, Client: c.id.Load(), Keys: keys, N: int64(last)})
			if err == nil {
				c.conn.Store(conn)
			}
			c.sendMu.Unlock()
			if err == nil {
				if c.closing.Load() { // Close ran meanwhile, on the old connection
					conn.Close()
					c.resumed()
					return false
				}
				c.log.Info("connected to the scheduler again", "scheduler", c.addr, "attempts", attempt, "keys", len(keys))
				return true
			}
			conn.Abort()
		}
		if !time.Now().Before(deadline) {
			c.log.Warn("could not reach the scheduler again", "scheduler", c.addr, "err", err)
			return false
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

// reject fails a key's futures because its graph was refused, unless the key had already
// resolved from an earlier submission (which still stands).
func (c *Client) reject(key string, r keyResult) {
	c.mu.Lock()
	ks, ok := c.mu.futures[key]
	closed := ok && ks.closed
	c.mu.Unlock()
	if ok && !closed {
		c.resolve(key, r)
	}
}

func (c *Client) resolve(key string, r keyResult) {
	c.mu.Lock()
	ks, ok := c.mu.futures[key]
	if !ok {
		c.mu.Unlock()
		return
	}
	if ks.closed { // a recomputed or re-stored key: keep the newest location
		ks.res = r
		c.mu.Unlock()
		return
	}
	cbs := ks.closeLocked(r)
	c.mu.Unlock()
	runAll(cbs)
}

// request sends m with a fresh id and waits for the reply.
func (c *Client) request(ctx context.Context, m *wire.Msg) (*wire.Msg, error) {
	ch := make(chan *wire.Msg, 1)
	c.mu.Lock()
	if c.mu.err != nil {
		c.mu.Unlock()
		return nil, c.mu.err
	}
	c.mu.nextID++
	m.ID = c.mu.nextID
	c.mu.pending[m.ID] = ch
	c.mu.Unlock()
	if err := c.conn.Load().Send(m); err != nil {
		return nil, err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, ErrClosed
		}
		if r.Op == wire.OpError {
			return nil, wire.Errorf(r.Code, r.Message)
		}
		return r, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.mu.pending, m.ID)
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// Info returns the workers the scheduler knows.
func (c *Client) Info(ctx context.Context) ([]wire.WorkerInfo, error) {
	r, err := c.request(ctx, &wire.Msg{Op: wire.OpInfo})
	if err != nil {
		return nil, err
	}
	return r.Workers, nil
}

// WhoHas returns the data addresses holding each key.
func (c *Client) WhoHas(ctx context.Context, keys ...string) (map[string][]string, error) {
	r, err := c.request(ctx, &wire.Msg{Op: wire.OpWhoHas, Keys: keys})
	if err != nil {
		return nil, err
	}
	return r.WhoHas, nil
}

// Submit sends the graph and returns one future per wanted key (in order). Every task of the
// graph is submitted; only wanted keys are kept once computed. It fails without sending
// anything when building the graph failed (Graph.Err).
func (c *Client) Submit(ctx context.Context, g *Graph, want ...Key) ([]*Future, error) {
	if g.err != nil {
		return nil, g.err
	}
	wanted := make([]string, len(want))
	futs := make([]*Future, len(want))
	// graphs go out in their id order, none between a resume and the graphs it asks for again
	c.sendMu.Lock()
	for {
		c.mu.Lock()
		gate := c.mu.resuming
		c.mu.Unlock()
		if gate == nil {
			break
		}
		c.sendMu.Unlock()
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		c.sendMu.Lock()
	}
	defer c.sendMu.Unlock()
	c.mu.Lock()
	if c.mu.err != nil {
		c.mu.Unlock()
		return nil, c.mu.err
	}
	c.mu.nextID++
	id := c.mu.nextID
	for i, k := range want {
		wanted[i] = string(k)
		futs[i] = c.futureLocked(string(k))
	}
	c.mu.Unlock()
	m := &wire.Msg{Op: wire.OpUpdateGraph, ID: id, Tasks: g.tasks, Wanted: wanted, Funcs: g.funcs}
	if err := c.conn.Load().Send(m); err != nil {
		for _, f := range futs {
			f.releaseLocked()
		}
		return nil, err
	}
	c.mu.Lock()
	c.keepSentLocked(m)
	c.mu.Unlock()
	return futs, nil
}

func (c *Client) futureLocked(key string) *Future {
	ks, ok := c.mu.futures[key]
	if !ok {
		ks = &keyState{done: make(chan struct{})}
		c.mu.futures[key] = ks
	}
	ks.refs++
	return &Future{c: c, key: key, ks: ks}
}

// Cancel cancels the keys of these futures (and their dependents): their futures, and every
// other future of this client to the same keys, resolve with an error matching ErrCancelled.
func (c *Client) Cancel(futs ...*Future) error {
	keys := make([]string, len(futs))
	for i, f := range futs {
		keys[i] = f.key
	}
	return c.conn.Load().Send(&wire.Msg{Op: wire.OpCancelKeys, Keys: keys})
}

func (c *Client) release(f *Future) {
	c.sendMu.Lock() // after any want a resume is sending again (sendUnread)
	defer c.sendMu.Unlock()
	c.releaseSendLocked(f)
}

// releaseSendLocked is release with sendMu held.
func (c *Client) releaseSendLocked(f *Future) {
	c.mu.Lock()
	ks, ok := c.mu.futures[f.key]
	if !ok || ks != f.ks {
		c.mu.Unlock()
		return
	}
	ks.refs--
	last := ks.refs == 0
	if last {
		delete(c.mu.futures, f.key)
	}
	c.mu.Unlock()
	if last {
		c.conn.Load().Send(&wire.Msg{Op: wire.OpReleaseKeys, Keys: []string{f.key}})
	}
}

// releaseLocked is Release for a caller that holds sendMu.
func (f *Future) releaseLocked() { f.released.Do(func() { f.c.releaseSendLocked(f) }) }
