package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// DefaultMemoryLimit is the memory budget used when Config.MemoryLimit is 0.
const DefaultMemoryLimit int64 = 4 << 30

// Config configures a Worker. Start from DefaultConfig and change what you need; New calls
// Validate.
type Config struct {
	// Name identifies the worker to the scheduler; empty means the data address.
	Name string
	// Host is the IP address the data port binds to (0.0.0.0 or :: for every interface).
	Host string
	// AdvertiseHost is the IP address (or name) peers, clients and the scheduler reach the
	// data port at, when it differs from Host: always for a wildcard Host, which nobody can
	// dial. Empty: Host.
	AdvertiseHost string
	// DataPort is the data port; 0 picks a free one.
	DataPort int
	// NThreads is the number of task slots (Go tasks run on goroutines, Python tasks take a
	// slot and an executor process).
	NThreads int
	// MemoryLimit is the byte budget of the result store; 0 means DefaultMemoryLimit.
	MemoryLimit int64
	// SpillFraction: above SpillFraction×MemoryLimit bytes held in memory, least recently
	// used results are written to LocalDir. 0 disables spilling.
	SpillFraction float64
	// ProcessSpillFraction: when the memory resident in the worker process and its Python
	// executors exceeds ProcessSpillFraction×MemoryLimit, the memory monitor spills least
	// recently used results until it is back under SpillFraction×MemoryLimit (dask's
	// "spill" threshold; SpillFraction plays dask's "target"). 0 disables the monitor.
	ProcessSpillFraction float64
	// PauseFraction: above PauseFraction×MemoryLimit bytes of results in memory, or of
	// memory resident in the worker and its executors while results are left to spill, no
	// new task is started until memory falls. 0 disables pausing.
	PauseFraction float64
	// TerminateFraction: above TerminateFraction×MemoryLimit of memory resident in the worker
	// and its executors, the executor using the most is killed and its task fails, as dask's
	// nanny kills its worker (memory.terminate). 0 disables it.
	TerminateFraction float64
	// MemoryMonitorInterval is how often the memory monitor reads process memory.
	MemoryMonitorInterval time.Duration
	// LocalDir is where the worker creates its own scratch directory (removed by Close).
	LocalDir string
	// Token is the shared secret for every connection (scheduler, peers, clients).
	Token string
	// ServerTLS secures the data port; ClientTLS the connections to the scheduler and
	// peers. nil: plain TCP.
	ServerTLS, ClientTLS *tls.Config
	// Python is the interpreter that runs Python executors; PythonArgs are its arguments
	// (default: -m shoal.executor).
	Python     string
	PythonArgs []string
	// NProcsPython bounds the number of Python executor processes (started lazily).
	NProcsPython int
	// StartPython starts one Python executor as soon as the worker has registered, rather
	// than at its first Python task, which then does not wait for Python's
	// start-up and imports (a dask worker is a Python process already). Off, a worker that
	// only ever runs Go tasks starts no Python at all.
	StartPython bool
	// Resources are the abstract resources this worker offers, e.g. {"GPU": 1}.
	Resources map[string]float64
	// Logger receives the worker's logs; nil discards them.
	Logger *slog.Logger
	// Logs returns the process's last n log lines (all kept when n <= 0), served to clients
	// by get_logs on the data port; nil: none are kept.
	Logs func(n int) []string
	// Limits bound what peers may make this process allocate; zero means wire.DefaultLimits.
	Limits wire.Limits
	// MaxDataConns bounds the open connections of the data port per role (peers, clients);
	// more are refused in the handshake with "busy".
	MaxDataConns int
	// DataIdleTimeout drops a data connection silent that long between requests (0: never);
	// MessageTimeout drops one that stalls that long in the middle of a message.
	DataIdleTimeout time.Duration
	MessageTimeout  time.Duration
	// HeartbeatInterval is how often load and memory are reported to the scheduler.
	HeartbeatInterval time.Duration
	// MaxConcurrentFetches bounds outgoing get_data requests in flight.
	MaxConcurrentFetches int
	// MaxFetchBytes bounds the declared bytes of dependencies in flight (a single larger
	// value is still fetched when nothing else is in flight).
	MaxFetchBytes int64
	// ShutdownGrace bounds how long Run waits for running tasks after its context ends.
	ShutdownGrace time.Duration
	// Version is reported to the scheduler in register.
	Version string

	// Reconnect is how long a worker that lost the scheduler (a cut link, a scheduler that
	// died or restarted) keeps trying to register again, with backoff, keeping its results
	// and executors meanwhile; then Run returns the error. 0: Run returns at once.
	Reconnect time.Duration
	// SchedulerTimeout: a scheduler connection on which nothing arrived for this long is
	// taken for dead (the scheduler answers heartbeats, at most every 1.9 s). 0: 5 ×
	// HeartbeatInterval, at least 5 s.
	SchedulerTimeout time.Duration
	// Locate finds the scheduler's control address again after it was lost (gossip: it may
	// have restarted elsewhere); nil, or an error, means the last known address.
	Locate func(ctx context.Context) (string, error)
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	n := runtime.NumCPU()
	return Config{
		Host:                  "127.0.0.1",
		NThreads:              n,
		SpillFraction:         0.6,
		ProcessSpillFraction:  0.7,
		PauseFraction:         0.8,
		TerminateFraction:     0.95,
		MemoryMonitorInterval: 50 * time.Millisecond,
		LocalDir:              os.TempDir(),
		Python:                "python3",
		PythonArgs:            []string{"-m", "shoal.executor"},
		NProcsPython:          n,
		Limits:                wire.DefaultLimits(),
		HeartbeatInterval:     time.Second,
		MaxDataConns:          1024,
		DataIdleTimeout:       10 * time.Minute,
		MessageTimeout:        wire.DefaultMessageTimeout,
		MaxConcurrentFetches:  4,
		MaxFetchBytes:         512 << 20,
		ShutdownGrace:         10 * time.Second,
		Version:               "dev",
	}
}

// Validate reports the first bad value, naming it.
func (c *Config) Validate() error {
	switch {
	case c.Host == "":
		return errors.New("worker: config: Host is empty")
	case c.AdvertiseHost != "" && !dialableHost(c.AdvertiseHost):
		return fmt.Errorf("worker: config: AdvertiseHost %q is not an address peers can dial", c.AdvertiseHost)
	case c.DataPort < 0 || c.DataPort > 65535:
		return fmt.Errorf("worker: config: DataPort %d is not a port number (0..65535)", c.DataPort)
	case c.NThreads < 1:
		return fmt.Errorf("worker: config: NThreads %d must be at least 1", c.NThreads)
	case c.MemoryLimit < 0:
		return fmt.Errorf("worker: config: MemoryLimit %d is negative", c.MemoryLimit)
	case c.SpillFraction < 0 || c.SpillFraction > 1:
		return fmt.Errorf("worker: config: SpillFraction %g is outside [0, 1]", c.SpillFraction)
	case c.ProcessSpillFraction < 0 || c.ProcessSpillFraction > 1:
		return fmt.Errorf("worker: config: ProcessSpillFraction %g is outside [0, 1]", c.ProcessSpillFraction)
	case c.MemoryMonitorInterval < 0:
		return fmt.Errorf("worker: config: MemoryMonitorInterval %v is negative", c.MemoryMonitorInterval)
	case c.PauseFraction < 0 || c.PauseFraction > 1:
		return fmt.Errorf("worker: config: PauseFraction %g is outside [0, 1]", c.PauseFraction)
	case c.TerminateFraction < 0 || c.TerminateFraction > 1:
		return fmt.Errorf("worker: config: TerminateFraction %g is outside [0, 1]", c.TerminateFraction)
	case c.LocalDir == "":
		return errors.New("worker: config: LocalDir is empty")
	case c.Python == "":
		return errors.New("worker: config: Python is empty")
	case c.NProcsPython < 1:
		return fmt.Errorf("worker: config: NProcsPython %d must be at least 1", c.NProcsPython)
	case c.MaxDataConns <= 0:
		return fmt.Errorf("worker: config: MaxDataConns %d must be positive", c.MaxDataConns)
	case c.DataIdleTimeout < 0 || c.MessageTimeout < 0:
		return fmt.Errorf("worker: config: DataIdleTimeout %v and MessageTimeout %v must not be negative",
			c.DataIdleTimeout, c.MessageTimeout)
	case c.Reconnect < 0 || c.SchedulerTimeout < 0:
		return fmt.Errorf("worker: config: Reconnect %v and SchedulerTimeout %v must not be negative", c.Reconnect, c.SchedulerTimeout)
	case c.HeartbeatInterval <= 0:
		return fmt.Errorf("worker: config: HeartbeatInterval %v must be positive", c.HeartbeatInterval)
	case c.MaxConcurrentFetches < 1:
		return fmt.Errorf("worker: config: MaxConcurrentFetches %d must be at least 1", c.MaxConcurrentFetches)
	case c.MaxFetchBytes < 1:
		return fmt.Errorf("worker: config: MaxFetchBytes %d must be positive", c.MaxFetchBytes)
	case c.ShutdownGrace < 0:
		return fmt.Errorf("worker: config: ShutdownGrace %v is negative", c.ShutdownGrace)
	case len(c.Token) > 1024:
		return fmt.Errorf("worker: config: Token is %d bytes (at most 1024)", len(c.Token))
	}
	for name, v := range c.Resources {
		if name == "" || v < 0 {
			return fmt.Errorf("worker: config: Resources[%q] = %g: names must be non-empty and amounts non-negative", name, v)
		}
	}
	if c.Limits.MaxFrames < 0 || c.Limits.MaxFrame < 0 || c.Limits.MaxHeader < 0 || c.Limits.MaxMessage < 0 {
		return fmt.Errorf("worker: config: Limits %+v has a negative value", c.Limits)
	}
	return nil
}

// dialableHost tells whether host (an IP address or a name) could be dialled: not a wildcard.
func dialableHost(host string) bool {
	return wire.CheckDialable(net.JoinHostPort(host, "1")) == nil
}

// advertisedAddr is the data address the worker announces for a listener bound at bound.
func (c *Config) advertisedAddr(bound net.Addr) string {
	if c.AdvertiseHost == "" {
		return bound.String()
	}
	return net.JoinHostPort(c.AdvertiseHost, strconv.Itoa(bound.(*net.TCPAddr).Port))
}

// memoryLimit returns the effective memory budget.
func (c *Config) memoryLimit() int64 {
	if c.MemoryLimit == 0 {
		return DefaultMemoryLimit
	}
	return c.MemoryLimit
}

func (c *Config) limits() wire.Limits {
	if c.Limits.MaxFrames == 0 {
		return wire.DefaultLimits()
	}
	return c.Limits
}
