package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/shoal-dev/shoal/internal/wire"
)

// ErrClosed is returned by Run when the worker was closed.
var ErrClosed = errors.New("worker: closed")

// Worker runs tasks for a scheduler, stores their results and serves them to peers and
// clients over its data port. Create it with New, connect it with Run, stop it with Close.
type Worker struct {
	cfg      Config
	log      *slog.Logger
	ln       net.Listener
	dataAddr string
	scratch  *scratchDir // spill files (scratch.go)
	// schedAddr is the scheduler's control address once Run has it: a task's own client
	// (get_client in the executor) connects there
	schedAddr atomic.Pointer[string]
	store     *Store
	peers     *peerPool
	py        *executorPool

	memLimit, pauseAt int64
	mem               memState

	ctx    context.Context // the worker's lifetime; cancelled by Close
	cancel context.CancelFunc
	closed atomic.Bool
	// unhealthy is why the worker cannot serve now (its data port cannot accept), or nil;
	// heartbeats carry it to the scheduler.
	unhealthy atomic.Pointer[string]
	// goroutines tracks every goroutine started through goFunc, so that Close can wait for them
	goroutines struct {
		sync.Mutex
		wg     sync.WaitGroup
		closed bool // Close is waiting: start no more goroutines
	}

	sched atomic.Pointer[wire.Conn] // the scheduler connection while Run is serving
	// lastRecv is when the scheduler connection last delivered a message (unix ns)
	lastRecv atomic.Int64
	// askedInterval is the heartbeat interval the scheduler last asked for, ns (0: none)
	askedInterval atomic.Int64
	stackMu       sync.Mutex // one call-stack dump at a time (stack.go)

	stats struct {
		executed, erred          atomic.Int64
		bytesSent, bytesRecv     atomic.Int64
		transfersIn, transferOut atomic.Int64
		fetchFailures            atomic.Int64
		seceded                  atomic.Int64 // Python tasks that gave their thread back
		// values handed over between workers on this machine as segment descriptors
		shmIn, shmOut atomic.Int64
	}

	mu struct {
		sync.Mutex
		cond       *sync.Cond
		tasks      map[string]*task  // queued, fetching or running
		ready      taskHeap          // tasks whose inputs are all in the store
		running    int               // tasks executing now
		seq        uint64            // ties in ready order, fetch request ids
		fetches    map[string]*fetch // dependencies being fetched or waiting to be
		fetchQueue []*fetch          // fetches not in flight, in arrival order
		active     int               // get_data requests in flight
		inFlight   int64             // declared bytes in flight
		funcData   map[string][]byte // pickled Python callables by hash
		draining   bool              // shutting down: start nothing new
		closed     bool              // Close was called
		dataConns  map[*wire.Conn]struct{}
	}
}

// New validates cfg, creates the worker's scratch directory, binds the data port and starts
// serving it and the task threads. The worker does nothing else until Run.
func New(cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	scratch, purged, err := newScratchDir(cfg.LocalDir)
	if err != nil {
		return nil, fmt.Errorf("worker: creating scratch directory in %s: %w", cfg.LocalDir, err)
	}
	dir := scratch.path
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.DataPort)))
	if err != nil {
		scratch.remove()
		return nil, fmt.Errorf("worker: binding data port: %w", err)
	}
	w := &Worker{cfg: cfg, ln: ln, dataAddr: cfg.advertisedAddr(ln.Addr()), scratch: scratch}
	if cfg.Name == "" {
		w.cfg.Name = w.dataAddr
	}
	w.log = log.With("worker", w.cfg.Name)
	for _, p := range purged {
		w.log.Info("removed the scratch directory of a worker that is gone", "dir", p)
	}
	w.memLimit = cfg.memoryLimit()
	w.pauseAt = int64(cfg.PauseFraction * float64(w.memLimit))
	w.store = NewStore(dir, int64(cfg.SpillFraction*float64(w.memLimit)))
	w.store.OnSpillError = func(path string, err error) {
		var errno syscall.Errno
		errors.As(err, &errno)
		w.log.Error("spilling to disk failed: no value is spilled there for the next 30 s", "path", path,
			"errno", int(errno), "err", err)
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	w.peers = newPeerPool(w)
	w.store.alloc = w.peers.bufs.get // segment bytes read for a client or a Go task are garbage soon
	w.py = newExecutorPool(w)
	w.mu.cond = sync.NewCond(&w.mu.Mutex)
	w.mu.tasks = make(map[string]*task)
	w.mu.fetches = make(map[string]*fetch)
	w.mu.funcData = make(map[string][]byte)
	w.mu.dataConns = make(map[*wire.Conn]struct{})

	if cfg.ServerTLS != nil {
		ln = tls.NewListener(ln, cfg.ServerTLS)
	}
	w.goFunc(func() { w.acceptLoop(ln) })
	for i := range cfg.NThreads {
		w.goFunc(func() { w.thread(i) })
	}
	w.goFunc(func() { w.memoryLoop(w.ctx) })
	w.log.Info("worker started", "data_addr", w.dataAddr, "nthreads", cfg.NThreads,
		"memory_limit", w.memLimit, "local_dir", dir)
	return w, nil
}

// MemoryLimit is the worker's effective memory budget in bytes (Config.MemoryLimit, or
// DefaultMemoryLimit when that is 0).
func (w *Worker) MemoryLimit() int64 { return w.memLimit }

// DataAddr is the address of the data port (host:port).
func (w *Worker) DataAddr() string { return w.dataAddr }

// Name is the worker's name as sent to the scheduler.
func (w *Worker) Name() string { return w.cfg.Name }

// Store gives access to the worker's result store (for tests and embedding).
func (w *Worker) Store() *Store { return w.store }

// goFunc runs f on a goroutine that Close waits for. Once Close has begun it starts nothing
// and returns false.
func (w *Worker) goFunc(f func()) bool {
	w.goroutines.Lock()
	defer w.goroutines.Unlock()
	if w.goroutines.closed {
		return false
	}
	w.goroutines.wg.Add(1)
	go func() {
		defer w.goroutines.wg.Done()
		f()
	}()
	return true
}

// Close stops everything: the data port, the scheduler connection, peer connections, task
// threads and Python executors (killed), then removes the scratch directory. It waits for
// every goroutine the worker started, including running Go tasks (their context is
// cancelled). Calling it again is a no-op.
func (w *Worker) Close() error {
	if w.closed.Swap(true) {
		return nil
	}
	w.goroutines.Lock()
	w.goroutines.closed = true
	w.goroutines.Unlock()
	w.cancel()
	w.ln.Close()
	w.mu.Lock()
	w.mu.closed = true
	conns := make([]*wire.Conn, 0, len(w.mu.dataConns))
	for c := range w.mu.dataConns {
		conns = append(conns, c)
	}
	w.mu.cond.Broadcast()
	w.mu.Unlock()
	for _, c := range conns {
		c.Abort()
	}
	if c := w.sched.Swap(nil); c != nil {
		c.Abort()
	}
	w.peers.closeAll()
	w.py.closeAll()
	w.goroutines.wg.Wait()
	w.store.Close()
	err := w.scratch.remove()
	w.log.Info("worker closed")
	return err
}

// send queues m to the scheduler; it is dropped when not connected.
func (w *Worker) send(m *wire.Msg) {
	c := w.sched.Load()
	if c == nil {
		return
	}
	if err := c.Send(m); err != nil {
		w.log.Debug("dropping message to scheduler", "op", m.Op, "err", err)
	}
}
