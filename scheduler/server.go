package scheduler

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/shoal-dev/shoal"
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// Version is reported to clients and workers: Shoal's version, from the repository's VERSION file.
var Version = shoal.Version

// ServerConfig configures the scheduler's network driver.
type ServerConfig struct {
	Host             string // default 127.0.0.1
	Port             int    // control port; 0 picks a free one
	Token            string
	TLS              *tls.Config
	Limits           wire.Limits
	Logger           *slog.Logger
	Core             CoreConfig
	TickInterval     time.Duration // how often the core gets EvTick (stealing)
	HeartbeatTimeout time.Duration // a worker silent this long is removed
	ExitWait         time.Duration // how long a broken worker stream waits for an exit reason
	DashboardURL     string        // advertised to clients
	// MaxClients and MaxWorkers bound the open connections of each role (more are refused in
	// the handshake with "busy"); ClientIdleTimeout drops a client silent that long (0: never);
	// MessageTimeout drops any peer that stalls that long in the middle of a message.
	MaxClients        int
	MaxWorkers        int
	ClientIdleTimeout time.Duration
	MessageTimeout    time.Duration
	// Logs returns the process's last n log lines (all kept when n <= 0) for get_logs; nil:
	// none are kept.
	Logs func(n int) []string
	// Listener, when set, is used for the control port instead of binding Host:Port (tests
	// serve on an in-memory or pre-bound listener); Clock, when set, replaces time.Now.
	Listener net.Listener
	Clock    func() time.Time
	// Journal, when set, is a directory where graphs, wanted keys, shared state and failures
	// are journaled, so that a scheduler started again on it resumes the work (journal.go).
	Journal string
	// RecoveryWait bounds how long a scheduler restarted on a journal waits for the workers it
	// knew to register again before it places work (it starts as soon as all are back).
	RecoveryWait time.Duration
	// ClientGrace is how long a client the journal knew has to reconnect and resume after a
	// restart before what it wanted is released.
	ClientGrace time.Duration
}

// unhealthy is why a heartbeat says its worker cannot serve, or "".
func unhealthy(m *wire.Msg) string {
	if m.State != wire.StateUnhealthy {
		return ""
	}
	if m.Reason == "" {
		return "unhealthy"
	}
	return m.Reason
}

// maxAdmins bounds open admin connections (`shoal status`, the dashboard's queries).
const maxAdmins = 64

// DefaultServerConfig returns the defaults used by `shoal scheduler`.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{Host: "127.0.0.1", Port: 8786, Limits: wire.DefaultLimits(), Core: DefaultCoreConfig(),
		TickInterval: 100 * time.Millisecond, HeartbeatTimeout: 30 * time.Second, ExitWait: 150 * time.Millisecond,
		MaxClients: 1024, MaxWorkers: 16384, MessageTimeout: wire.DefaultMessageTimeout,
		RecoveryWait: 3 * time.Second, ClientGrace: 2 * time.Minute}
}

// Validate reports the first bad value.
func (c ServerConfig) Validate() error {
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("scheduler: port %d out of range", c.Port)
	}
	if c.TickInterval <= 0 {
		return fmt.Errorf("scheduler: tick interval %v must be positive", c.TickInterval)
	}
	if c.HeartbeatTimeout <= 0 {
		return fmt.Errorf("scheduler: heartbeat timeout %v must be positive", c.HeartbeatTimeout)
	}
	if c.MaxClients <= 0 || c.MaxWorkers <= 0 {
		return fmt.Errorf("scheduler: max clients %d and max workers %d must be positive", c.MaxClients, c.MaxWorkers)
	}
	if c.RecoveryWait < 0 || c.ClientGrace < 0 {
		return fmt.Errorf("scheduler: recovery wait %v and client grace %v must not be negative", c.RecoveryWait, c.ClientGrace)
	}
	if c.ClientIdleTimeout < 0 || c.MessageTimeout < 0 {
		return fmt.Errorf("scheduler: client idle timeout %v and message timeout %v must not be negative",
			c.ClientIdleTimeout, c.MessageTimeout)
	}
	return c.Core.Validate()
}

// Server accepts client, worker and admin connections and drives the Core. One goroutine (run)
// owns the core and every map below; connection goroutines only decode and forward.
type Server struct {
	cfg  ServerConfig
	log  *slog.Logger
	ln   net.Listener
	core *Core
	// named is the definition a plain task's compute is encoded from, namedDeps the array of
	// its dependencies' keys (driver goroutine only)
	named     graph.Task
	namedDeps []string

	in       chan inbound
	ahead    *readAhead // worker messages decoded and not yet handled
	queries  chan func()
	stopped  context.Context // done once the server stops (Close: endStop)
	stop     <-chan struct{} // stopped.Done()
	endStop  context.CancelFunc
	wg       sync.WaitGroup
	once     sync.Once
	poll     *wire.Poller // idle worker connections wait here (poller)
	pollOnce sync.Once

	// owned by the driver goroutine
	workers workerTable
	byAddr  map[string]WorkerID
	byName  map[string]WorkerID
	clients map[ClientID]*clientConn
	funcs   map[string][]byte
	exits   map[string]string // worker name → how its process ended (from a supervisor)
	// graphSeq is the highest update_graph id read from each client (journaled with the
	// graph): a client resuming after a restart re-sends the graphs that came after it, which
	// were in flight when the scheduler died
	graphSeq map[ClientID]uint64
	nextW    WorkerID
	nextC    ClientID
	actions  []Action
	// the lists of a message's dependencies and their holders' addresses, reused (wireDeps)
	depScratch  []wire.Dep
	addrScratch []string
	handling    int            // handle calls under way (an action's may handle an event of its own)
	dirty       []*wire.Conn   // connections queued to first in this pass (queue)
	finished    EvTaskFinished // the event of the task_finished being handled
	obs         *observers
	stats       serverStats
	started     time.Time
	lastTick    time.Time

	scaler      Scaler
	retirements []*retiring
	fired       []string // fire-and-forget keys that ended, released after this event
	firing      bool
	preloads    preloadStore
	shared      sharedDriver // Variable, Queue, Semaphore, Event, datasets (shared_server.go)

	advertise string                 // the control address told to clients ("": the bound one)
	journal   *journal               // nil: not journaling (journal.go)
	recov     *recovery              // after a restart on a journal: workers joining back (recover.go)
	orphans   map[ClientID]time.Time // clients the journal knew, not yet resumed → when to let go
}

type workerConn struct {
	id       WorkerID
	conn     *wire.Conn
	info     wire.WorkerInfo
	sent     map[string]bool // py function hashes this worker has received
	lastSeen time.Time
	acked    time.Time // when a heartbeat was last answered
	closing  bool
	retired  bool // told to close by retire_workers
	pid      int
	// asked is the heartbeat interval last asked of it (0: none), askedBefore the one before
	asked, askedBefore time.Duration
}

type clientConn struct {
	id   ClientID
	conn *wire.Conn
}

// inbound is one decoded message (or a connection event) for the driver.
type inbound struct {
	worker  *workerConn
	client  *clientConn
	admin   *wire.Conn
	msg     *wire.Msg
	frames  [][]byte
	err     error // the connection ended
	joined  bool
	exit    *workerExit
	gossip  *gossipDead
	reply   chan error
	timerOf WorkerID
	batch   []inbound // messages that arrived together on one connection, in order
	ahead   bool      // holds a share of the read-ahead budget (readahead.go)
	// fin is a task_finished decoded without a Msg (msg nil, finished set): a worker's most
	// frequent message (wire.TaskFinished)
	fin      wire.TaskFinished
	finished bool
}

// maxBatch bounds how many messages a connection reader hands to the driver at once.
const maxBatch = 64

// inboundQueue is how many messages or batches wait for the driver before readers wait to
// hand theirs on. It bounds what is read ahead of the driver: a reader that waits reads no
// more, and what its peer sends meanwhile stays in the socket (TCP's flow control then slows
// the peer). At 4,096 batches of up to maxBatch messages, 10,000 zero-cost workers answering
// at once had ~90,000 decoded messages (824 bytes each) and ~1,800 64 KiB read buffers
// waiting: the heap grew to 800 MB and the kernel's zeroing of fresh pages was a quarter of
// the scheduler's CPU (docs/performance.md, "Zero-cost workers").
const inboundQueue = 128

// maxReadAhead is the read-ahead budget (readahead.go): four of the driver's passes (drain's
// budget), in grants of a batch.
const maxReadAhead = 4096

type workerExit struct{ name, reason string }
type gossipDead struct{ addr, reason string }

// NewServer binds the control port.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Limits.MaxFrames == 0 {
		cfg.Limits = wire.DefaultLimits()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Core.HeartbeatTimeout == 0 || cfg.HeartbeatTimeout < cfg.Core.HeartbeatTimeout {
		cfg.Core.HeartbeatTimeout = cfg.HeartbeatTimeout // the core owns the liveness policy
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))); err != nil {
			return nil, fmt.Errorf("scheduler: listen: %w", err)
		}
	}
	if cfg.TLS != nil {
		ln = tls.NewListener(ln, cfg.TLS)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, ln: ln, core: NewCore(cfg.Core),
		in: make(chan inbound, inboundQueue), queries: make(chan func()),
		byAddr: map[string]WorkerID{}, byName: map[string]WorkerID{},
		clients: map[ClientID]*clientConn{}, funcs: map[string][]byte{}, exits: map[string]string{},
		nextW: 1, nextC: 1, obs: newObservers(), started: cfg.Clock(),
		orphans: map[ClientID]time.Time{}, graphSeq: map[ClientID]uint64{}}
	s.stopped, s.endStop = context.WithCancel(context.Background())
	s.stop = s.stopped.Done()
	s.ahead = newReadAhead(s.stopped, maxReadAhead, maxBatch)
	if cfg.Journal != "" {
		if err := s.openJournal(); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return s, nil
}

// Addr is the control address actually bound.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// SetAdvertiseAddr sets the control address told to clients in info (where other machines
// reach it, when the server listens on a wildcard; call before Serve).
func (s *Server) SetAdvertiseAddr(a string) { s.advertise = a }

// advertised is the control address clients are told.
func (s *Server) advertised() string {
	if s.advertise != "" {
		return s.advertise
	}
	return s.Addr()
}

// SetDashboardURL sets the URL advertised to clients (call before Serve).
func (s *Server) SetDashboardURL(u string) { s.cfg.DashboardURL = u }

// Serve runs until ctx is cancelled or Close is called.
func (s *Server) Serve(ctx context.Context) error {
	s.goFunc(s.acceptLoop)
	ticker := time.NewTicker(s.cfg.TickInterval)
	defer ticker.Stop()
	defer s.closeJournal() // on the driver goroutine: the last pass's records are written
	for {
		// The next batch of queued root tasks, when an event stopped at DispatchBatch, is a
		// case like the others: what arrived meanwhile is served in turn, not after it all.
		var more <-chan struct{}
		if s.core.DispatchPending() {
			more = ready
		}
		select {
		case <-ctx.Done():
			s.Close()
			return nil
		case <-s.stop:
			return nil
		case in := <-s.in:
			t0 := time.Now()
			s.handleInbound(in)
			s.drain()
			s.flush()
			s.stats.busy += int64(time.Since(t0))
		case <-more:
			t0 := time.Now()
			s.stats.dispatches++
			s.handle(EvDispatch{})
			s.flush()
			s.stats.busy += int64(time.Since(t0))
		case q := <-s.queries:
			q()
			s.flush()
		case <-ticker.C:
			s.tick(s.cfg.Clock())
			s.flush()
		}
	}
}

// ready is a channel that is always ready to receive from.
var ready = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// queue buffers m on c and remembers to flush c at the end of this pass.
func (s *Server) queue(c *wire.Conn, m *wire.Msg) {
	if first, _ := c.QueueFirst(m); first {
		s.dirty = append(s.dirty, c)
	}
}

// flush wakes the writer of every connection written to in this pass.
func (s *Server) flush() {
	s.journalWrite() // first: what a client is told is in the journal
	for i, c := range s.dirty {
		c.FlushNow()
		s.dirty[i] = nil
	}
	s.dirty = s.dirty[:0]
}

// drain handles whatever else is already queued, so bursts are processed without select
// overhead per message.
func (s *Server) drain() {
	for n := 0; n < 1024; {
		if s.core.DispatchPending() {
			return // flush what this pass handed out before more goes (CoreConfig.DispatchBatch)
		}
		select {
		case in := <-s.in:
			s.handleInbound(in)
			n += max(len(in.batch), 1) // a budget in messages, so the pass ends and flushes
		default:
			return
		}
	}
}

// Close stops accepting and aborts every connection, dropping messages not yet written. No
// message announces it: workers and clients see their connection end (a worker's Run then
// returns its "lost the scheduler" error). It waits for all goroutines the server started.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.endStop()
		s.ln.Close()
	})
	s.wg.Wait()
	s.pollOnce.Do(func() {}) // none made after this
	if s.poll != nil {
		s.poll.Close()
	}
	return nil
}

// poller is where worker connections wait for their next message without a goroutine each,
// made on first use; nil when it cannot be made (the readers then wait in read(2)).
func (s *Server) poller() *wire.Poller {
	s.pollOnce.Do(func() {
		p, err := wire.NewPoller(s.log)
		if err != nil {
			s.log.Warn("no poller for worker connections: each waits on a goroutine of its own", "err", err)
			return
		}
		s.poll = p
	})
	return s.poll
}

func (s *Server) goFunc(f func()) {
	s.wg.Add(1)
	go func() { defer s.wg.Done(); f() }()
}

// errStopped is returned by QueryContext when the scheduler is shutting down.
var errStopped = errors.New("scheduler: stopped")

// Query runs f on the driver goroutine (the only one allowed to touch the core) and waits;
// false when the scheduler stopped first.
func (s *Server) Query(f func(*Core)) bool {
	return s.QueryContext(context.Background(), f) == nil
}

// QueryContext is Query bounded by ctx: it returns ctx's error if the driver did not take f
// in time, or errStopped when the scheduler stopped.
func (s *Server) QueryContext(ctx context.Context, f func(*Core)) error {
	done := make(chan struct{})
	select {
	case s.queries <- func() { f(s.core); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stop:
		return errStopped
	}
	select {
	case <-done:
		return nil
	case <-s.stop:
		return errStopped
	}
}

// ReportWorkerExit tells the scheduler how a supervised worker process ended ("exit code 1",
// "signal: killed"); it is used in killed-worker messages and speeds up recovery.
func (s *Server) ReportWorkerExit(name, reason string) {
	s.send(inbound{exit: &workerExit{name, reason}})
}

// ReportGossipDead tells the scheduler that gossip declared the worker with this data address
// dead; its control stream, if still open, is closed.
func (s *Server) ReportGossipDead(dataAddr, reason string) {
	s.send(inbound{gossip: &gossipDead{dataAddr, reason}})
}

func (s *Server) send(in inbound) {
	select {
	case s.in <- in:
	case <-s.stop:
	}
}

func (s *Server) acceptLoop() {
	srv := wire.NewServer(wire.ServeConfig{
		Token:  s.cfg.Token,
		Limits: s.cfg.Limits,
		MaxConns: map[wire.Role]int{wire.RoleClient: s.cfg.MaxClients, wire.RoleWorker: s.cfg.MaxWorkers,
			wire.RoleAdmin: maxAdmins},
		IdleTimeout:    map[wire.Role]time.Duration{wire.RoleClient: s.cfg.ClientIdleTimeout},
		MessageTimeout: s.cfg.MessageTimeout,
		Log:            s.log,
	})
	stopping := func() bool {
		select {
		case <-s.stop:
			return true
		default:
			return false
		}
	}
	srv.Accept(s.ln, stopping, func(f func()) bool { s.goFunc(f); return true }, s.serveConn)
}

func (s *Server) serveConn(c *wire.Conn) {
	// Aborted when the server stops: by a callback, not a goroutine per connection waiting
	// for it (10,000 workers made 10,000 such goroutines, whose stacks every garbage
	// collection scanned).
	unstop := context.AfterFunc(s.stopped, func() { c.Abort() })
	switch c.PeerRole {
	case wire.RoleWorker:
		s.readWorker(c, unstop) // which may outlive this call (parked): it calls unstop
		return
	case wire.RoleClient:
		s.readClient(c)
	default:
		s.readAdmin(c)
	}
	unstop()
}

// recvOrReport reads one message; on a framing or header error it tells the peer why before
// the connection is dropped.
func recvOrReport(c *wire.Conn) (*wire.Msg, [][]byte, error) {
	m, frames, err := c.Recv()
	return m, frames, reportRecvErr(c, err)
}

// recvWorkerMsg reads a worker's next message into in: a task_finished as in.fin, anything
// else as in.msg; errors as recvOrReport.
func recvWorkerMsg(c *wire.Conn, w *workerConn, in *inbound) error {
	*in = inbound{worker: w, ahead: true}
	m, frames, err := c.RecvFinished(&in.fin)
	in.msg, in.frames, in.finished = m, frames, err == nil && m == nil
	return reportRecvErr(c, err)
}

func reportRecvErr(c *wire.Conn, err error) error {
	if err != nil {
		switch {
		case errors.Is(err, wire.ErrFrameTooLarge):
			c.SendError(0, wire.CodeFrameTooLarge, err.Error())
		case errors.Is(err, wire.ErrProtocol):
			c.SendError(0, wire.CodeProtocol, err.Error())
		}
	}
	return err
}

// readWorker registers the worker, then reads its messages (workerReader.run), and ends the
// connection when they end (unstop: the server's stop no longer aborts it).
func (s *Server) readWorker(c *wire.Conn, unstop func() bool) {
	w, ok := s.readRegister(c)
	if !ok {
		unstop()
		c.Close()
		return
	}
	r := &workerReader{s: s, c: c, w: w, unstop: unstop}
	r.onResume, r.onGranted = r.resume, r.granted
	if c.Pollable() {
		r.poll = s.poller()
	}
	r.run()
}

// readRegister reads the worker's register message and waits for the driver to take it in.
func (s *Server) readRegister(c *wire.Conn) (*workerConn, bool) {
	m, _, err := recvOrReport(c)
	if err != nil {
		return nil, false
	}
	if m.Op != wire.OpRegister || m.DataAddr == "" || m.NThreads <= 0 {
		c.SendError(m.ID, wire.CodeProtocol, "a worker must first send register with data_addr and nthreads > 0")
		return nil, false
	}
	if addr, ok := wire.ResolveWildcard(m.DataAddr, c.RemoteAddr()); ok {
		s.log.Info("a worker advertised a wildcard data address: using the address it connects from",
			"advertised", m.DataAddr, "using", addr)
		m.DataAddr = addr
	}
	if err := wire.CheckDialable(m.DataAddr); err != nil {
		s.log.Warn("refused a worker's registration", "remote", c.RemoteAddr().String(), "err", err)
		c.SendError(m.ID, wire.CodeProtocol, "register: data_addr: "+err.Error())
		return nil, false
	}
	w := &workerConn{conn: c, sent: map[string]bool{}, pid: m.PID, info: wire.WorkerInfo{
		Name: m.Name, Address: m.DataAddr, NThreads: m.NThreads, MemoryLimit: m.MemLimit, Resources: m.Resources, PID: m.PID}}
	reply := make(chan error, 1)
	s.send(inbound{worker: w, msg: m, joined: true, reply: reply})
	select {
	case err := <-reply:
		return w, err == nil
	case <-s.stop:
		return nil, false
	}
}

// workerReader reads a registered worker's messages and hands them to the driver. When the
// worker has sent nothing more, the reader parks the connection in the server's poller and
// returns, and a new goroutine goes on once bytes come (resume): an idle worker connection
// has no goroutine (docs/performance.md, "10,000 workers: one waiter for idle connections").
type workerReader struct {
	s        *Server
	c        *wire.Conn
	w        *workerConn
	unstop   func() bool  // the server's stop no longer aborts c
	poll     *wire.Poller // nil: the reader waits in read(2), as for a TLS connection
	detached bool         // detach ran: it holds a count of the server's wait group
	// r.resume and r.granted as values, made once: a method value passed on is an
	// allocation each time, and they are passed at every park and every wait for a grant
	onResume  func()
	onGranted func(int)
}

// resume goes on reading once the poller saw bytes come (or the connection closed). It runs
// on the poller's goroutine, so it never waits: it takes a grant of the read-ahead budget
// first, and reads nothing without one (the reader is resumed again once a grant is free:
// granted); it hands on the messages already whole in the buffer, and leaves whatever would
// wait (the rest of a message, a full inbound queue, the end) to a goroutine of its own. A
// heartbeat, or a burst of task_finished, thus costs no goroutine at all.
func (r *workerReader) resume() {
	grant := r.s.ahead.takeOr(r.onGranted)
	if grant == 0 {
		return // nothing read: the bytes wait in the socket
	}
	r.c.TryFill()
	r.loop(false, grant)
}

// granted is called with a grant once one is free for a reader that waited for it (takeOr),
// or with 0 when the server stops. It runs under the budget's lock: it only starts the
// reader's goroutine.
func (r *workerReader) granted(n int) {
	if n == 0 {
		go r.end(nil)
		return
	}
	go func() {
		r.c.TryFill() // (nothing may have been read: a resume without a grant reads nothing)
		r.loop(true, n)
	}()
}

// run reads until the connection ends (it then ends it) or it is parked.
func (r *workerReader) run() { r.loop(true, 0) }

// loop reads the worker's messages and hands them to the driver until the connection ends or
// is parked; with wait false, it stops short of anything that would wait, and hands it to a
// goroutine (resume). held is a grant of the read-ahead budget already taken.
//
// Messages already buffered behind the one read (a worker's burst of task_finished) go to the
// driver together: one channel hand-off and wake-up instead of one per message. The batch's
// slice is taken only then, so that a connection waiting for its next message holds none (at
// 10,000 workers, one each was 128 MB). Each message holds a share of the read-ahead budget
// until the driver handled it; none is held while the reader waits for its peer, and a
// reader that finds none free leaves a callback for when one is (granted) and returns.
func (r *workerReader) loop(wait bool, held int) {
	s, c := r.s, r.c
	for {
		if r.poll != nil && c.Drained() {
			s.ahead.give(held) // (no message came after all)
			held = 0
			if r.park() {
				return
			}
			if !c.TryFill() && c.Drained() {
				continue // nothing came after all: park again
			}
		}
		if !c.MessageBuffered() {
			s.ahead.give(held) // none is held while the reader waits for its peer
			held = 0
			if !wait {
				go r.run() // the rest of a message, or the end
				return
			}
			if !r.readSplit() {
				return
			}
			continue
		}
		grant := held
		if held = 0; grant == 0 {
			grant = s.ahead.tryTake()
		}
		if grant == 0 {
			// no 64 KiB held while it waits; before the callback is left, for the callback's
			// goroutine may run at once
			c.ShrinkBuffer()
			r.detach() // the callback's goroutine may outlive serveConn's
			if grant = s.ahead.takeOr(r.onGranted); grant == 0 {
				return
			}
		}
		var in inbound
		if err := recvWorkerMsg(c, r.w, &in); err != nil {
			s.ahead.give(grant)
			r.endOn(wait, err)
			return
		}
		x, err := r.gather(in, grant)
		if !wait {
			select {
			case s.in <- x:
			default:
				go r.sendOn(x, err)
				return
			}
		} else {
			s.sendFrom(c, x)
		}
		if err != nil {
			r.endOn(wait, err)
			return
		}
	}
}

// readSplit reads a message that is not yet whole in the buffer (waiting for the rest of it),
// then waits for a grant for it and hands it on; false when the connection ended.
func (r *workerReader) readSplit() bool {
	s, c := r.s, r.c
	var in inbound
	if err := recvWorkerMsg(c, r.w, &in); err != nil {
		r.end(err)
		return false
	}
	grant := s.ahead.tryTake()
	if grant == 0 {
		c.ShrinkBuffer()                        // no 64 KiB held while it waits
		if grant = s.ahead.take(); grant == 0 { // stopping
			r.end(nil)
			return false
		}
	}
	x, err := r.gather(in, grant)
	s.sendFrom(c, x)
	if err != nil {
		r.end(err)
		return false
	}
	return true
}

// endOn is end, on a goroutine of its own unless the caller may wait (loop's wait): end
// waits for the driver and for the connection's output.
func (r *workerReader) endOn(wait bool, err error) {
	if wait {
		r.end(err)
	} else {
		go r.end(err)
	}
}

// gather reads the messages already whole in the buffer behind in, as far as grant (the
// shares taken for in and them) goes, gives back the shares unused, and returns what to hand
// the driver: in alone, or a batch. err is a read error that ended the batch.
func (r *workerReader) gather(in inbound, grant int) (inbound, error) {
	s, c := r.s, r.c
	grant--
	if grant == 0 || !c.MessageBuffered() {
		s.ahead.give(grant)
		return in, nil
	}
	batch := append(newBatch(), in)
	var err error
	for grant > 0 && len(batch) < maxBatch && c.MessageBuffered() {
		batch = append(batch, inbound{})
		if err = recvWorkerMsg(c, r.w, &batch[len(batch)-1]); err != nil {
			batch = batch[:len(batch)-1]
			break
		}
		grant--
	}
	s.ahead.give(grant)
	if len(batch) == 1 {
		in = batch[0]
		freeBatch(batch)
		return in, err
	}
	return inbound{batch: batch}, err // the driver owns the slice, and gives it back (freeBatch)
}

// sendOn hands x to the driver, waiting if need be, then reads on (or ends, after err).
func (r *workerReader) sendOn(x inbound, err error) {
	r.s.sendFrom(r.c, x)
	if err != nil {
		r.end(err)
		return
	}
	r.run()
}

// detach, the first time, has the reader take over what serveConn's return gives back: a
// count of the server's wait group, and the wire server's hold on the connection (its slot
// among MaxConns). A reader calls it before it leaves the goroutine it runs on for good with
// the connection not ended (it parks it, or leaves a callback for a grant).
func (r *workerReader) detach() {
	if !r.detached {
		r.detached = true
		r.s.wg.Add(1) // serveConn's goroutine still holds one: Close cannot be waiting on zero
		r.c.Keep()
	}
}

// park parks the connection (true: the caller returns, the connection is the poller's).
func (r *workerReader) park() bool {
	r.detach()
	parked, err := r.c.Park(r.poll, r.onResume)
	if err != nil {
		r.s.log.Warn("cannot poll a worker connection: its reader waits in read instead",
			"worker", r.w.info.Name, "err", err)
		r.poll = nil
	}
	return parked
}

// end ends the connection once its messages end: the driver hears why (err; nil when the
// server stops), and the connection is closed.
func (r *workerReader) end(err error) {
	if err != nil {
		r.s.send(inbound{worker: r.w, err: err})
	}
	r.c.Unpoll()
	r.unstop()
	r.c.Close()
	if r.detached {
		r.c.End()
		r.s.wg.Done()
	}
}

// batchPool recycles the slices of messages a worker connection hands to the driver together:
// allocated per batch, they were ~270 bytes per task on workload 9. A new slice has room for a
// few messages and grows (up to maxBatch) only for a longer burst: with 10,000 workers each
// connection's reader holds a batch while it waits to hand it over, and at maxBatch entries of
// ~140 bytes each those were 91 MB of a 400 MB heap, mostly empty.
var batchPool = sync.Pool{New: func() any { b := make([]inbound, 0, 4); return &b }}

func newBatch() []inbound { return (*batchPool.Get().(*[]inbound))[:0] }

func freeBatch(b []inbound) {
	clear(b)
	b = b[:0]
	batchPool.Put(&b)
}

// sendFrom is send for a message read from c: when the driver is behind, c's read buffer
// shrinks (if it can) before the reader waits.
func (s *Server) sendFrom(c *wire.Conn, in inbound) {
	select {
	case s.in <- in:
	default:
		c.ShrinkBuffer()
		s.send(in)
	}
}

func (s *Server) readClient(c *wire.Conn) {
	defer c.Close()
	cl := &clientConn{conn: c}
	reply := make(chan error, 1)
	s.send(inbound{client: cl, joined: true, reply: reply})
	select {
	case <-reply:
	case <-s.stop:
		return
	}
	for {
		m, frames, err := recvOrReport(c)
		if err != nil {
			s.send(inbound{client: cl, err: err})
			return
		}
		s.send(inbound{client: cl, msg: m, frames: frames})
	}
}

func (s *Server) readAdmin(c *wire.Conn) {
	defer c.Close()
	for {
		m, _, err := recvOrReport(c)
		if err != nil {
			return
		}
		s.send(inbound{admin: c, msg: m})
	}
}

// ---- driver side ----

func (s *Server) handleInbound(in inbound) {
	if in.batch != nil {
		shares := 0
		for _, x := range in.batch {
			if x.ahead {
				shares++
				x.ahead = false // given back below, at once
			}
			s.handleInbound(x)
		}
		s.ahead.give(shares)
		freeBatch(in.batch)
		return
	}
	s.stats.msgsIn++
	switch {
	case in.exit != nil:
		s.onWorkerExit(in.exit)
	case in.gossip != nil:
		s.onGossipDead(in.gossip)
	case in.timerOf != 0:
		if w := s.workers.get(in.timerOf); w != nil {
			s.removeWorker(w, s.exitReason(w, "connection lost"), false)
		}
	case in.worker != nil:
		if in.ahead {
			s.ahead.give(1)
		}
		s.onWorker(in)
		if in.msg != nil && !in.joined {
			wire.ReleaseMsg(in.msg) // nothing keeps the header itself, only what it points to
		}
	case in.client != nil:
		s.onClient(in)
		if in.msg != nil {
			wire.ReleaseMsg(in.msg)
		}
	case in.admin != nil:
		s.onAdmin(in.admin, in.msg)
	}
}

func (s *Server) handle(ev Event) {
	// An action may handle an event of its own (removing a worker handles its leaving): that
	// one must not reuse this pass's slice while its actions are performed, or its actions
	// take the place of those not yet done (a second worker timing out in the same tick was
	// not removed). It gets a slice of its own; the larger is kept for the next event.
	s.handling++
	acts := s.core.Handle(ev, s.actions[:0])
	s.actions = nil
	for _, a := range acts {
		s.perform(a)
	}
	clear(acts) // the actions hold keys and graphs: not kept alive until the slice is reused
	if cap(acts) >= cap(s.actions) {
		s.actions = acts[:0]
	}
	if len(s.fired) > 0 && !s.firing {
		// fire-and-forget tasks that ended: their pseudo-client lets them go
		s.firing = true
		keys := s.fired
		s.fired = nil
		s.handle(EvReleaseKeys{Client: fireClient, Keys: keys})
		s.firing = false
	}
	if s.handling--; s.handling == 0 {
		s.core.RecycleActions() // every action of this event, and of those nested in it, done
	}
}

// fireClient is the pseudo-client wanting fire-and-forget keys until they end.
const fireClient ClientID = 1<<31 - 1

func firstKey(keys []string) string {
	if len(keys) > 0 {
		return keys[0]
	}
	return ""
}

func (s *Server) tick(now time.Time) {
	s.lastTick = now
	s.handle(EvTick{Now: now.UnixNano()}) // the core removes silent workers (ActRemoveWorker)
	s.sharedTick(now)
	s.obs.sample(s, now)
	if len(s.retirements) > 0 {
		s.checkRetiring(now)
	}
	if s.recov != nil {
		s.recoveryTick(now)
	}
	if len(s.orphans) > 0 {
		s.releaseOrphans(now)
	}
	if s.journal != nil {
		s.journalTick(now)
	}
}

func (s *Server) onWorkerExit(e *workerExit) {
	s.exits[e.name] = e.reason
	if id, ok := s.byName[e.name]; ok {
		if w := s.workers.get(id); w != nil && w.closing {
			s.removeWorker(w, e.reason, false)
		}
	}
}

// gossipGrace: gossip's verdict that a worker is dead is not believed while its control
// stream spoke this recently (the stream is proof of life; gossip may be cut off alone, or
// its verdict may arrive after the worker registered again).
const gossipGrace = 2 * time.Second

func (s *Server) onGossipDead(g *gossipDead) {
	if id, ok := s.byAddr[g.addr]; ok {
		w := s.workers.get(id)
		if since := s.cfg.Clock().Sub(w.lastSeen); since < gossipGrace {
			s.log.Warn("gossip says a worker is gone, but its control stream spoke recently: keeping it",
				"worker", w.info.Name, "gossip", g.reason, "last_message", since.Round(time.Millisecond))
			return
		}
		w.conn.Abort()
		s.removeWorker(w, s.exitReason(w, g.reason), false)
	}
}

func (s *Server) exitReason(w *workerConn, fallback string) string {
	if r, ok := s.exits[w.info.Name]; ok {
		delete(s.exits, w.info.Name)
		return r
	}
	return fallback
}

func (s *Server) onWorker(in inbound) {
	w := in.worker
	if in.joined {
		s.registerWorker(w, in.msg, in.reply)
		return
	}
	if s.workers.get(w.id) == nil {
		return
	}
	if in.err != nil {
		s.workerStreamBroke(w, in.err)
		return
	}
	w.lastSeen = s.cfg.Clock()
	if in.finished {
		s.onTaskFinished(w, &in.fin)
		return
	}
	s.onWorkerMsg(w, in.msg)
}

func (s *Server) onTaskFinished(w *workerConn, f *wire.TaskFinished) {
	s.stats.finished++
	s.obs.taskDone(w, f.Key, f.Thread, f.Start, f.Stop, f.NBytes, false)
	// a task that ran on through a restart, finished while its worker waits for the others
	// to come back (not yet in the core, which would drop the report): a result the worker
	// holds, as those it registered with. (One whose result holds futures is left to run
	// again: a join's holds carry no such references.)
	if s.recov != nil && len(f.Keys) == 0 &&
		s.recov.addHolds(w.id, []wire.Item{{Key: f.Key, Encoding: f.Encoding, NBytes: f.NBytes}}) {
		return
	}
	// by pointer to one reused value: an EvTaskFinished in the Event interface was an
	// allocation per task (the core keeps nothing of the event)
	s.finished = EvTaskFinished{Worker: w.id, Key: f.Key, TaskID: f.TaskID, NBytes: f.NBytes, Encoding: f.Encoding,
		Start: f.Start, Stop: f.Stop, Thread: f.Thread, Holds: f.Keys}
	s.handle(&s.finished)
	s.finished = EvTaskFinished{} // keeps no key or holds alive
}

func (s *Server) registerWorker(w *workerConn, m *wire.Msg, reply chan error) {
	if w.info.Name == "" {
		w.info.Name = w.info.Address
	}
	var replaces WorkerID
	if oldID, dup := s.byName[w.info.Name]; dup {
		old := s.workers.get(oldID)
		if old.pid == 0 || old.pid != w.pid || old.info.Address != w.info.Address {
			w.conn.SendError(m.ID, wire.CodeDuplicateWorker, fmt.Sprintf("a worker named %q is already registered", w.info.Name))
			reply <- errors.New("duplicate")
			return
		}
		// The same process (name, pid and data address) lost its connection and came back
		// before its old one broke on this side: the new registration takes over.
		s.log.Info("worker registered again: replacing its previous connection", "worker", w.info.Name)
		old.closing = true
		old.conn.Abort()
		s.workers.remove(oldID)
		delete(s.byAddr, old.info.Address)
		delete(s.byName, old.info.Name)
		replaces = oldID
	}
	w.id = s.nextW
	s.nextW++
	now := s.cfg.Clock()
	w.lastSeen = now
	s.workers.add(w)
	s.byAddr[w.info.Address] = w.id
	s.byName[w.info.Name] = w.id
	// with the heartbeat interval a cluster this large asks for: a worker that joins 10,000
	// others heartbeats at that pace from the start, not once a second until its first answer
	// (10,000 workers registering made a storm of 3,000 heartbeats a second)
	reg := &wire.Msg{Op: wire.OpRegistered, WorkerID: int64(w.id)}
	w.asked = askedInterval(s.workers.len())
	reg.Interval = w.asked.Seconds()
	w.conn.Send(reg)
	for _, name := range s.preloads.names { // before any compute: its executors need them
		s.queue(w.conn, s.preloads.items[name])
	}
	s.profileJoined(w)
	reply <- nil
	s.stats.registrations++
	s.log.Info("worker joined", "worker", w.info.Name, "address", w.info.Address, "nthreads", w.info.NThreads,
		"holds", len(m.Items), "again", replaces != 0)
	s.obs.workerJoined(w)
	s.journalWorker(w.info.Name, true)
	ev := EvWorkerJoined{Worker: w.id, Name: w.info.Name, Addr: w.info.Address, NThreads: w.info.NThreads,
		MemoryLimit: w.info.MemoryLimit, Resources: w.info.Resources, Functions: m.Functions, Holds: m.Items,
		Replaces: replaces, Now: now.UnixNano(), Running: m.Running, Seceded: secededFlags(m.Running, m.Seceded),
		Asked: int64(w.asked)}
	if s.recov != nil && s.recov.hold(ev) {
		s.recoveryTick(now) // joined with the others when the recovery ends (recover.go)
		return
	}
	s.handle(ev)
}

// secededFlags says, for each running key, whether it is among seceded.
func secededFlags(running, seceded []string) []bool {
	if len(seceded) == 0 {
		return nil
	}
	set := make(map[string]bool, len(seceded))
	for _, k := range seceded {
		set[k] = true
	}
	out := make([]bool, len(running))
	for i, k := range running {
		out[i] = set[k]
	}
	return out
}

// workerStreamBroke waits briefly for the supervisor to say how the process ended, so the
// killed-worker message can name an exit code or signal.
func (s *Server) workerStreamBroke(w *workerConn, err error) {
	if w.closing {
		return
	}
	w.closing = true
	if r, ok := s.exits[w.info.Name]; ok {
		delete(s.exits, w.info.Name)
		s.removeWorker(w, r, false)
		return
	}
	id := w.id
	time.AfterFunc(s.cfg.ExitWait, func() { s.send(inbound{timerOf: id}) })
}

func (s *Server) removeWorker(w *workerConn, reason string, graceful bool) {
	s.removeWorkerWith(w, reason, graceful, nil)
}

// removeWorkerWith removes w; a farewell message is sent to it before its connection closes.
func (s *Server) removeWorkerWith(w *workerConn, reason string, graceful bool, farewell *wire.Msg) {
	if s.workers.get(w.id) == nil {
		return
	}
	s.workers.remove(w.id)
	delete(s.byAddr, w.info.Address)
	delete(s.byName, w.info.Name)
	if farewell != nil {
		w.conn.Queue(farewell)
		s.goFunc(func() { w.conn.Close() }) // flushes the farewell first, for at most a second
	} else {
		w.conn.Abort()
	}
	// Those that may be fetching from it are told, so that their fetches end now rather than at
	// a timeout, and they let go of their connections to it. Not every worker: when a whole
	// cluster of 10,000 left, telling each of the others about each was 50 million messages
	// and 46 s of the scheduler's CPU. (While workers come back after a restart, which of them
	// were given its address before is not known: all are told.)
	gone := &wire.Msg{Op: wire.OpPeerGone, Worker: w.info.Address, Reason: reason}
	if ids, all := s.core.fetchersOf(w.id); all || s.recov != nil {
		for o := range s.workers.all() {
			s.queue(o.conn, gone)
		}
	} else {
		for _, id := range ids {
			if o := s.workers.get(id); o != nil {
				s.queue(o.conn, gone)
			}
		}
	}
	s.log.Info("worker left", "worker", w.info.Name, "reason", reason, "graceful", graceful)
	s.journalWorker(w.info.Name, false)
	if s.recov != nil {
		s.recov.drop(w.id)
	}
	s.obs.workerLeft(w, reason)
	s.handle(EvWorkerLeft{Worker: w.id, Reason: reason, Graceful: graceful})
}

// heartbeatAck answers every heartbeat: a worker that hears nothing for a while knows its
// connection is dead (a cut link, a scheduler gone) and connects again. (Queue encodes the
// message before it returns, so one value serves every worker.)
var heartbeatAck = &wire.Msg{Op: wire.OpHeartbeat}

// ackEvery spaces the answers: a worker gives up after five heartbeat intervals (5 s) of
// silence, and 10,000 workers need not cost 10,000 writes a second.
const ackEvery = 1900 * time.Millisecond

// heartbeatInterval is how often the scheduler asks each of n workers to send its heartbeat:
// five milliseconds per worker, so that a cluster sends about 200 heartbeats a second whatever
// its size, as dask's scheduler asks (n/200 + 1 s), up to maxHeartbeatInterval. Each heartbeat
// costs an idle scheduler a wake-up besides its reading, decoding and answering: 10,000 workers
// at a millisecond each (1,450 a second) kept it at 17 % of a core. A worker asked for a long
// interval may be silent for silentIntervals of them before it is taken for dead, beyond the
// heartbeat timeout. Workers never go below their own --heartbeat interval; below a second
// nothing is asked.
func heartbeatInterval(n int) time.Duration {
	return min(time.Duration(n)*heartbeatPerWorker, maxHeartbeatInterval)
}

const (
	heartbeatPerWorker   = 5 * time.Millisecond
	maxHeartbeatInterval = 30 * time.Second // (a worker notices a silent scheduler after 5 of them)
)

// askedInterval is the heartbeat interval to ask of a worker now that the cluster has n of
// them: 0 when under a second (each keeps its own).
func askedInterval(n int) time.Duration {
	if iv := heartbeatInterval(n); iv > time.Second {
		return iv
	}
	return 0
}

func (s *Server) onWorkerMsg(w *workerConn, m *wire.Msg) {
	switch m.Op {
	case wire.OpTaskFinished: // one with fields RecvFinished does not take (a newer worker's)
		s.onTaskFinished(w, &wire.TaskFinished{Key: m.Key, TaskID: m.TaskID, NBytes: m.NBytes,
			Encoding: m.Encoding, Start: m.Start, Stop: m.Stop, Thread: m.Thread, Keys: m.Keys})
	case wire.OpTaskErred:
		err := m.Error
		if err == nil {
			err = wire.Errorf(wire.CodeTaskError, "task failed without an error description")
		}
		s.obs.taskDone(w, m.Key, m.Thread, m.Start, m.Stop, m.NBytes, true)
		s.handle(EvTaskErred{Worker: w.id, Key: m.Key, TaskID: m.TaskID, Err: err, Start: m.Start, Stop: m.Stop, Thread: m.Thread})
		s.onTaskErred(w, m.Key, err)
	case wire.OpAddKeys:
		if s.recov != nil && s.recov.addHolds(w.id, m.Items) {
			return
		}
		s.obs.transfers(w, m.Items)
		s.handle(EvAddReplica{Worker: w.id, Items: m.Items})
		if len(s.retirements) > 0 {
			s.checkRetiring(s.cfg.Clock())
		}
	case wire.OpMissingData:
		from, ok := s.byAddr[m.Worker]
		if !ok {
			from = -1
		}
		s.handle(EvMissingData{Reporter: w.id, Key: m.Key, From: from, Cause: m.Message})
	case wire.OpStealResponse:
		s.handle(EvStealResponse{Worker: w.id, Key: m.Key, Accepted: m.Accepted})
	case wire.OpHeartbeat:
		w.info.Memory, w.info.Spilled, w.info.Executing, w.info.Ready = m.Memory, m.Spilled, m.Executing, m.Ready
		w.info.CPU, w.info.BytesSent, w.info.BytesRecv = m.CPU, m.BytesSent, m.BytesRecv
		w.info.ProcessMemory = m.ProcMem
		if m.MemLimit > 0 {
			w.info.MemoryLimit = m.MemLimit
		}
		if now := s.cfg.Clock(); now.Sub(w.acked) >= ackEvery {
			w.acked = now
			ack := heartbeatAck // the worker knows the scheduler still hears it
			w.askedBefore, w.asked = w.asked, askedInterval(s.workers.len())
			if w.asked > 0 {
				ack = &wire.Msg{Op: wire.OpHeartbeat, Interval: w.asked.Seconds()}
			}
			s.queue(w.conn, ack)
		}
		s.handle(EvHeartbeat{Worker: w.id, Now: s.cfg.Clock().UnixNano(), Memory: m.Memory, Spilled: m.Spilled,
			Executing: m.Executing, Ready: m.Ready, Unhealthy: unhealthy(m), Asked: int64(max(w.asked, w.askedBefore))})
	case wire.OpReschedule:
		s.handle(EvReschedule{Worker: w.id, Keys: m.Keys})
	case wire.OpLongRunning:
		s.handle(EvLongRunning{Worker: w.id, Key: m.Key, TaskID: m.TaskID})
	case wire.OpProfileSamples:
		s.onProfileSamples(w, m)
	case wire.OpGoodbye:
		w.closing = true
		s.removeWorker(w, "worker closed: "+orDefault(m.Reason, "goodbye"), true)
	case wire.OpError:
		s.log.Warn("worker reported an error", "worker", w.info.Name, "code", m.Code, "message", m.Message)
	default:
		w.conn.SendError(m.ID, wire.CodeUnknownOp, fmt.Sprintf("op %q is not served on a worker stream", m.Op))
	}
}

// onTaskErred records a failure (or a retry, when the core re-ran the task) as a cluster event.
func (s *Server) onTaskErred(w *workerConn, key string, err *wire.Error) {
	retry := s.core.State(key) != Erred
	if !retry {
		s.stats.failed++
	}
	s.obs.taskFailed(w, key, err, retry)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (s *Server) onClient(in inbound) {
	cl := in.client
	if in.joined {
		cl.id = s.newClientID()
		s.clients[cl.id] = cl
		cl.conn.Send(&wire.Msg{Op: wire.OpWelcome, Client: int64(cl.id), Version: Version, Dashboard: s.cfg.DashboardURL})
		in.reply <- nil
		s.handle(EvClientJoined{Client: cl.id})
		return
	}
	if s.clients[cl.id] != cl {
		return // gone, or its id was taken over by the same client's new connection (resume)
	}
	if in.err != nil {
		s.clientGone(cl.id)
		return
	}
	s.onClientMsg(cl, in.msg)
}

// newClientID is the next id not in use (a resumed client may hold an id above nextC).
func (s *Server) newClientID() ClientID {
	for {
		id := s.nextC
		s.nextC++
		if _, used := s.clients[id]; !used && id < replayClient {
			if _, orphan := s.orphans[id]; !orphan {
				return id
			}
		}
	}
}

// clientGone releases what a departed client wanted.
func (s *Server) clientGone(id ClientID) {
	delete(s.clients, id)
	delete(s.graphSeq, id)
	s.journalClientLeft(id)
	s.handle(EvClientLeft{Client: id})
	s.sharedClientLeft(id) // its leases are freed at once
}

// resume: a client that lost its connection (a cut link, a scheduler restart) takes its
// previous id back, so the keys it wanted — journaled, or still held for its old connection —
// are its own again, and says which keys it still holds futures for. It is told their states
// (at once for the finished ones); keys this scheduler does not know are "lost" — unless the
// client sent graphs this scheduler never read (m.N, the last update_graph id it sent, is
// above graphSeq: they were in flight when a scheduler died). Then those keys are listed in
// resumed (keys, with n = graphSeq) instead, for the client to send the graphs after n again
// and want them once more.
func (s *Server) resume(cl *clientConn, m *wire.Msg) {
	old := ClientID(m.Client)
	if old > 0 && old != cl.id && old < replayClient {
		if prev, ok := s.clients[old]; ok {
			prev.conn.Abort() // the old connection is half-open: this one replaces it
		}
		delete(s.clients, cl.id)
		s.handle(EvClientLeft{Client: cl.id}) // the new id held nothing yet
		cl.id = old
		s.clients[old] = cl
		delete(s.orphans, old)
		if old >= s.nextC {
			s.nextC = old + 1
		}
	}
	reply := &wire.Msg{Op: wire.OpResumed, ID: m.ID, Client: int64(cl.id)}
	wanted := m.Keys
	if seq := s.graphSeq[cl.id]; m.N > 0 && uint64(m.N) > seq {
		reply.N = int64(seq)
		wanted = make([]string, 0, len(m.Keys))
		for _, k := range m.Keys {
			if s.core.State(k) == Forgotten {
				reply.Keys = append(reply.Keys, k)
			} else {
				wanted = append(wanted, k)
			}
		}
	}
	cl.conn.Send(reply)
	holds := make(map[string]bool, len(m.Keys))
	for _, k := range m.Keys {
		holds[k] = true
	}
	var drop []string // wanted before, no longer held: the client released them meanwhile
	for _, k := range s.core.WantedBy(cl.id) {
		if !holds[k] {
			drop = append(drop, k)
		}
	}
	if len(drop) > 0 {
		s.journalMsg(&wire.Msg{Op: wire.OpReleaseKeys, Client: int64(cl.id), Keys: drop})
		s.handle(EvReleaseKeys{Client: cl.id, Keys: drop})
	}
	s.journalMsg(&wire.Msg{Op: wire.OpWanted, Client: int64(cl.id), Keys: wanted})
	s.handle(EvWanted{Client: cl.id, Keys: wanted})
	s.log.Info("client resumed", "client", cl.id, "keys", len(m.Keys), "released", len(drop),
		"keys_of_graphs_not_read", len(reply.Keys))
}

func (s *Server) onClientMsg(cl *clientConn, m *wire.Msg) {
	if m.Op != wire.OpUpdateGraph {
		s.journalClient(cl, m)
	}
	switch m.Op {
	case wire.OpUpdateGraph:
		if m.ID > s.graphSeq[cl.id] {
			s.graphSeq[cl.id] = m.ID
		}
		for h, b := range m.Funcs {
			if _, ok := s.funcs[h]; !ok {
				s.funcs[h] = b
			}
		}
		if bad := s.missingFunc(m.Tasks); bad != "" {
			keys := make([]string, len(m.Tasks))
			for i := range m.Tasks {
				keys[i] = m.Tasks[i].Key
			}
			cl.conn.Send(&wire.Msg{Op: wire.OpGraphRejected, ID: m.ID, Keys: keys,
				Error: wire.Errorf(wire.CodeInvalidTask, fmt.Sprintf("task %q refers to Python function %s, which was not sent in funcs", bad, shortHash(m.Tasks, bad)))})
			return
		}
		s.journalClient(cl, m)
		s.handle(EvUpdateGraph{Client: cl.id, ID: m.ID, Tasks: m.Tasks, Wanted: m.Wanted})
	case wire.OpWanted:
		s.handle(EvWanted{Client: cl.id, Keys: m.Keys})
	case wire.OpFireAndForget:
		s.handle(EvWanted{Client: fireClient, Keys: m.Keys})
	case wire.OpReleaseKeys:
		s.handle(EvReleaseKeys{Client: cl.id, Keys: m.Keys})
	case wire.OpCancelKeys:
		s.handle(EvCancelKeys{Client: cl.id, Keys: m.Keys})
	case wire.OpScatter:
		id, ok := s.byAddr[m.Worker]
		if !ok {
			cl.conn.SendError(m.ID, wire.CodeProtocol, fmt.Sprintf("scatter: no worker at %s", m.Worker))
			return
		}
		s.handle(EvScattered{Client: cl.id, Worker: id, Items: m.Items})
	case wire.OpResume:
		s.resume(cl, m)
	case wire.OpInfo, wire.OpWhoHas:
		s.onAdmin(cl.conn, m)
	case wire.OpRestart, wire.OpRetireWorkers, wire.OpReplicate, wire.OpRebalance, wire.OpScale, wire.OpProcessing,
		wire.OpGetLogs, wire.OpPreload, wire.OpStory, wire.OpTaskStream, wire.OpProfile:
		s.onControl(cl, m)
	default:
		if isSharedOp(m.Op) {
			s.onShared(cl, m)
			return
		}
		cl.conn.SendError(m.ID, wire.CodeUnknownOp, fmt.Sprintf("op %q is not served to clients", m.Op))
	}
}

func shortHash(tasks []graph.Task, key string) string {
	for _, t := range tasks {
		if t.Key == key && len(t.Func) > 12 {
			return t.Func[:12]
		}
	}
	return "?"
}

// missingFunc returns the key of a py task whose function the scheduler has never received.
func (s *Server) missingFunc(tasks []graph.Task) string {
	for i := range tasks {
		if tasks[i].Kind == graph.KindPy {
			if _, ok := s.funcs[tasks[i].Func]; !ok {
				return tasks[i].Key
			}
		}
	}
	return ""
}

func (s *Server) onAdmin(c *wire.Conn, m *wire.Msg) {
	switch m.Op {
	case wire.OpInfo:
		n, work := s.core.PendingWork()
		c.Send(&wire.Msg{Op: wire.OpInfoReply, ID: m.ID, Workers: s.workerInfos(), Scheduler: s.advertised(), Dashboard: s.cfg.DashboardURL,
			N: int64(n), Work: work})
	case wire.OpWhoHas:
		wh := make(map[string][]string, len(m.Keys))
		for _, k := range m.Keys {
			ids := s.core.WhoHas(k)
			addrs := make([]string, 0, len(ids))
			for _, id := range ids {
				if w := s.workers.get(id); w != nil {
					addrs = append(addrs, w.info.Address)
				}
			}
			wh[k] = addrs
		}
		c.Send(&wire.Msg{Op: wire.OpWhoHasReply, ID: m.ID, WhoHas: wh})
	default:
		c.SendError(m.ID, wire.CodeUnknownOp, fmt.Sprintf("op %q is not served here", m.Op))
	}
}

func (s *Server) workerInfos() []wire.WorkerInfo {
	out := make([]wire.WorkerInfo, 0, s.workers.len())
	for w := range s.workers.all() {
		wi := w.info
		wi.LastSeen = float64(w.lastSeen.UnixNano()) / 1e9
		out = append(out, wi)
	}
	sortWorkers(out)
	return out
}

// ---- performing actions ----

func (s *Server) perform(a Action) {
	s.stats.msgsOut++
	switch a := a.(type) {
	case *ActCompute:
		s.sendCompute(a)
	case ActFree:
		if w := s.workers.get(a.Worker); w != nil {
			s.queue(w.conn, &wire.Msg{Op: wire.OpFreeKeys, Keys: a.Keys})
		}
	case ActSteal:
		if w := s.workers.get(a.Victim); w != nil {
			s.queue(w.conn, &wire.Msg{Op: wire.OpStealRequest, Key: a.Key})
		}
	case *ActKeyState:
		if a.Client == fireClient {
			s.fired = append(s.fired, a.Key) // it ended: nobody waits for it any more
			return
		}
		s.sendKeyState(a)
	case ActAcquire:
		if w := s.workers.get(a.Worker); w != nil {
			s.queue(w.conn, &wire.Msg{Op: wire.OpAcquire, Deps: s.wireDeps(a.Deps, -1)})
		}
	case ActRemoveWorker:
		if w := s.workers.get(a.Worker); w != nil && !w.closing {
			s.removeWorker(w, a.Reason, false)
		}
	case ActGraphRejected:
		if cl, ok := s.clients[a.Client]; ok {
			cl.conn.Send(&wire.Msg{Op: wire.OpGraphRejected, ID: a.ID, Keys: a.Keys, Error: a.Err})
		}
		s.obs.graphRejected(a.Keys, a.Err)
	}
}

func (s *Server) sendCompute(a *ActCompute) {
	w := s.workers.get(a.Worker)
	if w == nil {
		return
	}
	def := a.Task
	if def.Key != a.Key {
		// a shared template: encoded from a copy with the key, reused for every compute
		// (the message is encoded before Queue returns)
		clear(s.namedDeps) // the last call's keys
		keys := s.namedDeps[:0]
		for _, d := range a.Deps {
			keys = append(keys, d.Key)
		}
		s.named, s.namedDeps = *def, keys
		s.named.Key, s.named.Payload, s.named.Group, s.named.Deps = a.Key, a.Payload, a.Group, keys
		def = &s.named
	}
	m := &wire.Msg{Op: wire.OpCompute, Task: def, TaskID: a.TaskID, Order: a.Order, Keep: a.Keep}
	if len(a.Deps) > 0 {
		m.Deps = s.wireDeps(a.Deps, a.Worker)
	}
	if def.Kind == graph.KindPy && !w.sent[def.Func] {
		m.FuncData = s.funcs[def.Func]
		w.sent[def.Func] = true
	}
	s.queue(w.conn, m)
	s.named = graph.Task{}
}

// wireDeps is the wire form of locs, with the data addresses of their holders still
// registered, in the driver's scratch lists: valid until the next call, which the message
// carrying it never outlives (queue encodes it before it returns). New lists were two
// allocations and one per dependency for every compute of a graph's inner tasks.
//
// A dependency that only worker own holds is left out (own: the worker the message goes to;
// -1 for none): a worker looks for holders of a dependency it lacks other than itself, so
// such an entry says nothing to it (one it has lost fails to be fetched either way, and is
// reported missing). Most of a graph's inner tasks run where their inputs are, and two such
// entries of two strings each were a third of a tree reduction's compute message.
func (s *Server) wireDeps(locs []DepLoc, own WorkerID) []wire.Dep {
	clear(s.depScratch) // the last call's keys
	deps, addrs := s.depScratch[:0], s.addrScratch[:0]
	for _, d := range locs {
		if len(d.Workers) == 1 && d.Workers[0] == own {
			continue
		}
		from := len(addrs)
		addrs = s.appendAddrs(addrs, d.Workers)
		deps = append(deps, wire.Dep{Key: d.Key, NBytes: d.NBytes, WhoHas: addrs[from:len(addrs):len(addrs)]})
	}
	s.depScratch, s.addrScratch = deps, addrs
	return deps
}

func (s *Server) addrs(ids []WorkerID) []string {
	return s.appendAddrs(make([]string, 0, len(ids)), ids)
}

// appendAddrs appends the data addresses of the workers ids that are still registered.
func (s *Server) appendAddrs(out []string, ids []WorkerID) []string {
	for _, id := range ids {
		if w := s.workers.get(id); w != nil {
			out = append(out, w.info.Address)
		}
	}
	return out
}

func (s *Server) sendKeyState(a *ActKeyState) {
	cl, ok := s.clients[a.Client]
	if !ok {
		return
	}
	m := &wire.Msg{Op: wire.OpKeyState, Key: a.Key, State: a.State, NBytes: a.NBytes, Encoding: a.Encoding, Error: a.Err}
	if a.State == "memory" {
		if w := s.workers.get(a.Worker); w != nil {
			m.Worker = w.info.Address
		}
	}
	s.queue(cl.conn, m)
}

// WorkerInfos returns the registered workers (safe from any goroutine).
func (s *Server) WorkerInfos() []wire.WorkerInfo {
	var out []wire.WorkerInfo
	s.Query(func(*Core) { out = s.workerInfos() })
	return out
}
