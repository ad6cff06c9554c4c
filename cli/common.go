package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/internal/logring"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/shoal-dev/shoal/scheduler"
)

var (
	version         = scheduler.Version
	protocolVersion = wire.Version
	errHelp         = errors.New("help")
)

func newFlagSet(name, args, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: shoal %s [flags]%s\n\n%s\n\nFlags:\n", name, args, about)
		fs.PrintDefaults()
	}
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return errHelp
	}
	if err == nil && fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	return err
}

// common holds the flags every process has: auth, TLS and logging.
type common struct {
	tokenFile, logFormat, logLevel string
	tlsCert, tlsKey, tlsCA         string
	cpuProfile, heapProfile        string
	messageTimeout                 time.Duration
	gossipKeyFile                  string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding a shared secret; every connection must present it (also encrypts gossip)")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate for TLS on control and data ports (needs --tls-key)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "PEM CA bundle used to verify peers (enables TLS as a client)")
	fs.StringVar(&c.gossipKeyFile, "gossip-key-file", "", "file holding a secret that encrypts and authenticates gossip (default: the --token-file token)")
	fs.DurationVar(&c.messageTimeout, "message-timeout", wire.DefaultMessageTimeout, "drop a connection whose peer stalls this long in the middle of a message")
	fs.StringVar(&c.cpuProfile, "cpu-profile", "", "write a Go CPU profile of this process to this file until it exits (for go tool pprof)")
	fs.StringVar(&c.heapProfile, "heap-profile", "", "write a Go heap profile of this process to this file when it exits: what it allocated since it started (go tool pprof -sample_index=alloc_space) and what was still in use")
}

// startProfile starts the CPU profile when --cpu-profile is set, and creates the
// --heap-profile file (so that a path that cannot be written is refused at once); the
// returned func stops the one and writes the other.
func (c *common) startProfile() (func(), error) {
	stop := func() {}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return nil, fmt.Errorf("--cpu-profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("--cpu-profile: %w", err)
		}
		stop = func() { pprof.StopCPUProfile(); f.Close() }
	}
	if c.heapProfile != "" {
		f, err := os.Create(c.heapProfile)
		if err != nil {
			stop()
			return nil, fmt.Errorf("--heap-profile: %w", err)
		}
		stopCPU := stop
		stop = func() {
			stopCPU()
			runtime.GC() // the profile's in-use figures are as of the last collection
			if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
				fmt.Fprintf(os.Stderr, "shoal: --heap-profile %s: %v\n", c.heapProfile, err)
			}
			if err := f.Close(); err != nil {
				fmt.Fprintf(os.Stderr, "shoal: --heap-profile %s: %v\n", c.heapProfile, err)
			}
		}
	}
	return stop, nil
}

// logs keeps this process's recent log lines for clients that ask for them (get_logs).
var logs = logring.New(0, 0)

func (c *common) logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	out := io.MultiWriter(os.Stderr, logs)
	switch c.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(out, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(out, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", c.logFormat)
}

func (c *common) token() (string, error) {
	if c.tokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", c.tokenFile)
	}
	return tok, nil
}

// gossipKey is the secret gossip is encrypted with: --gossip-key-file, else the token. Gossip
// without one accepts any datagram (a forged "dead" makes the scheduler drop a worker), so TLS
// on an address other machines reach, without a key, is refused: it would look secure and not
// be.
func (c *common) gossipKey(host, token string) (string, error) {
	key := token
	if c.gossipKeyFile != "" {
		b, err := os.ReadFile(c.gossipKeyFile)
		if err != nil {
			return "", fmt.Errorf("--gossip-key-file: %w", err)
		}
		if key = strings.TrimSpace(string(b)); key == "" {
			return "", fmt.Errorf("--gossip-key-file %s is empty", c.gossipKeyFile)
		}
	}
	tlsOn := c.tlsCert != "" || c.tlsCA != ""
	if ip := net.ParseIP(host); key == "" && tlsOn && (ip == nil || !ip.IsLoopback()) {
		return "", fmt.Errorf("TLS is on but gossip on %s would be unauthenticated: give --token-file or --gossip-key-file", host)
	}
	return key, nil
}

// tlsConfigs returns the server and client TLS configurations (nil, nil without TLS flags).
func (c *common) tlsConfigs() (server, client *tls.Config, err error) {
	if c.tlsCert == "" && c.tlsKey == "" && c.tlsCA == "" {
		return nil, nil, nil
	}
	var pool *x509.CertPool
	if c.tlsCA != "" {
		pem, err := os.ReadFile(c.tlsCA)
		if err != nil {
			return nil, nil, fmt.Errorf("--tls-ca: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--tls-ca %s: no PEM certificates found", c.tlsCA)
		}
	}
	client = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if c.tlsCert != "" || c.tlsKey != "" {
		if c.tlsCert == "" || c.tlsKey == "" {
			return nil, nil, errors.New("--tls-cert and --tls-key go together")
		}
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return nil, nil, fmt.Errorf("loading TLS key pair: %w", err)
		}
		server = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if pool != nil {
			server.ClientCAs = pool
			server.ClientAuth = tls.VerifyClientCertIfGiven
		}
		client.Certificates = []tls.Certificate{cert}
	}
	return server, client, nil
}

// start parses a long-running command's flags, starts the CPU profile when asked, and returns
// a context cancelled on SIGINT or SIGTERM; done stops both.
func start(fs *flag.FlagSet, c *common, args []string) (context.Context, func(), error) {
	if err := parse(fs, args); err != nil {
		return nil, nil, err
	}
	stopProfile, err := c.startProfile()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := signalContext()
	return ctx, func() { cancel(); stopProfile() }, nil
}

// signalContext is cancelled on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// parseBytes reads "4GiB", "512MB", "1e9", "0".
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(s), strings.ToUpper(u.suffix)) {
			mult = u.mult
			s = strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("bad size %q: use e.g. 4GiB, 512MB or a number of bytes", s)
	}
	return int64(f * mult), nil
}

// parseResources reads "GPU=1,MEM=10".
func parseResources(s string) (map[string]float64, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]float64{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		f, err := strconv.ParseFloat(v, 64)
		if !ok || k == "" || err != nil {
			return nil, fmt.Errorf("bad resource %q: want NAME=AMOUNT", kv)
		}
		out[k] = f
	}
	return out, nil
}

func totalMemory() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 8 << 30
}
