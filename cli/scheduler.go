package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/shoal-dev/shoal/internal/member"
	"github.com/shoal-dev/shoal/scheduler"
)

type schedFlags struct {
	common
	host, advertiseHost             string
	port, gossipPort, dashboardPort int
	maxClients                      int
	clientIdle, recoveryWait        time.Duration
	schedulerFile, journal          string
}

func (f *schedFlags) register(fs *flag.FlagSet) {
	f.common.register(fs)
	fs.StringVar(&f.host, "host", "127.0.0.1", hostHelp("every port and the workers of shoal local"))
	fs.StringVar(&f.advertiseHost, "advertise-host", "", advertiseHelp)
	fs.IntVar(&f.port, "port", 8786, "control port for clients and workers (0 picks a free port)")
	fs.IntVar(&f.gossipPort, "gossip-port", 7946, "gossip (memberlist) port, TCP and UDP (0 picks a free port)")
	fs.IntVar(&f.maxClients, "max-clients", 1024, "most client connections open at once; more are refused as busy")
	fs.DurationVar(&f.clientIdle, "client-idle-timeout", 0, "drop a client connection silent this long (0: never; clients may wait idle on results)")
	fs.StringVar(&f.schedulerFile, "scheduler-file", "", "write JSON {address, dashboard, token} here (mode 0600) for clients: Client(scheduler_file=...); removed at exit")
	fs.StringVar(&f.journal, "journal", "auto", "directory of the journal that lets a restarted scheduler resume client graphs, wanted keys and shared state (workers keep the results); auto: $XDG_STATE_HOME/shoal/scheduler-PORT (~/.local/state/...), none with --port 0; none: off")
	fs.DurationVar(&f.recoveryWait, "recovery-wait", 3*time.Second, "after a restart on a journal, wait at most this long for the workers it knew to register again before placing work")
	fs.IntVar(&f.dashboardPort, "dashboard-port", 8787, "HTTP port for the dashboard, /metrics and /api/v1 (0 picks a free port, -1 disables)")
}

func runScheduler(args []string) error {
	var f schedFlags
	fs := newFlagSet("scheduler", "", "Run the scheduler: it owns the task graph, places tasks on workers found by gossip,\nand serves the dashboard. Workers join with: shoal worker --join HOST:GOSSIP_PORT")
	f.register(fs)
	ctx, done, err := start(fs, &f.common, args)
	if err != nil {
		return err
	}
	defer done()
	sp, err := startScheduler(ctx, f)
	if err != nil {
		return err
	}
	fmt.Printf("scheduler at %s, gossip at %s\n", sp.addr, sp.gossip.Addr())
	if sp.dashboard != "" {
		fmt.Printf("dashboard at %s\n", sp.dashboard)
	}
	return sp.wait()
}

// schedProc is a running scheduler with its gossip member and HTTP server.
type schedProc struct {
	srv       *scheduler.Server
	addr      string // the control address advertised (srv.Addr() is where it listens)
	gossip    *member.Member
	http      *http.Server
	dashboard string
	log       *slog.Logger
	done      chan error
	stopDash  func()
	schedFile string // written at start, removed at close
}

func startScheduler(ctx context.Context, f schedFlags) (*schedProc, error) {
	log, err := f.logger()
	if err != nil {
		return nil, err
	}
	token, err := f.token()
	if err != nil {
		return nil, err
	}
	serverTLS, _, err := f.tlsConfigs()
	if err != nil {
		return nil, err
	}
	ha, err := resolveHost(f.host, f.advertiseHost)
	if err != nil {
		return nil, err
	}
	gkey, err := f.gossipKey(ha.bind, token)
	if err != nil {
		return nil, err
	}
	cfg := scheduler.DefaultServerConfig()
	cfg.Host, cfg.Port, cfg.Token, cfg.TLS, cfg.Logger = ha.bind, f.port, token, serverTLS, log
	cfg.Logs = logs.Last
	cfg.MaxClients, cfg.ClientIdleTimeout, cfg.MessageTimeout = f.maxClients, f.clientIdle, f.messageTimeout
	cfg.RecoveryWait = f.recoveryWait
	if cfg.Journal, err = journalDir(f.journal, f.port); err != nil {
		return nil, err
	}
	srv, err := scheduler.NewServer(cfg)
	if err != nil {
		return nil, err
	}
	sp := &schedProc{srv: srv, addr: ha.join(portOf(srv.Addr())), log: log, done: make(chan error, 1)}
	if err := checkAdvertised("the scheduler's control address", sp.addr); err != nil {
		srv.Close()
		return nil, err
	}
	srv.SetAdvertiseAddr(sp.addr)
	if ha.advertise != ha.bind {
		log.Info("listening on every interface", "host", f.host, "advertising", ha.advertise, "chosen_by", ha.how)
	}
	if f.dashboardPort >= 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ha.bind, strconv.Itoa(f.dashboardPort)))
		if err != nil {
			srv.Close()
			return nil, fmt.Errorf("dashboard port: %w", err)
		}
		// the URL printed and given to clients: where other machines reach the dashboard
		sp.dashboard = fmt.Sprintf("http://%s/", ha.join(ln.Addr().(*net.TCPAddr).Port))
		srv.SetDashboardURL(tokenLink(sp.dashboard, token))
		handler, stop, err := httpHandler(srv, log, token)
		if err != nil {
			ln.Close()
			srv.Close()
			return nil, err
		}
		sp.stopDash = stop
		sp.http = newHTTPServer(handler)
		go sp.http.Serve(limitHTTP(ln))
	}
	mc := member.DefaultConfig()
	mc.Name = "scheduler@" + sp.addr
	mc.BindAddr, mc.AdvertiseAddr, mc.BindPort, mc.Token, mc.Logger = ha.bind, ha.advertise, f.gossipPort, gkey, log
	mc.Meta = member.Meta{Role: "scheduler", Name: mc.Name, Control: sp.addr, HTTP: sp.dashboard, Version: version}
	sp.gossip, err = member.New(mc)
	if err != nil {
		sp.close()
		return nil, fmt.Errorf("gossip: %w", err)
	}
	if err := checkAdvertised("the scheduler's gossip address", sp.gossip.Addr()); err != nil {
		sp.close()
		return nil, err
	}
	go sp.watchGossip()
	if f.schedulerFile != "" {
		if err := writeSchedulerFile(f.schedulerFile, sp, token); err != nil {
			sp.close()
			return nil, fmt.Errorf("--scheduler-file: %w", err)
		}
		sp.schedFile = f.schedulerFile
	}
	go func() { sp.done <- srv.Serve(ctx) }()
	return sp, nil
}

// journalDir resolves --journal: a directory, none, or auto (a per-port directory in the
// user's state directory; none for a port picked at random, which no restart could reuse).
func journalDir(flagValue string, port int) (string, error) {
	switch flagValue {
	case "none", "":
		return "", nil
	case "auto":
		if port == 0 {
			return "", nil
		}
		base := os.Getenv("XDG_STATE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("--journal auto: no home directory to keep it in (%w); give --journal DIR or none", err)
			}
			base = filepath.Join(home, ".local", "state")
		}
		return filepath.Join(base, "shoal", fmt.Sprintf("scheduler-%d", port)), nil
	}
	return flagValue, nil
}

// writeSchedulerFile tells clients where the scheduler is, and its token, as dask's
// --scheduler-file does: a JSON file readable by this user only, replaced atomically.
func writeSchedulerFile(path string, sp *schedProc, token string) error {
	info := map[string]any{"type": "Scheduler", "address": "tcp://" + sp.addr, "dashboard": sp.dashboard,
		"gossip": sp.gossip.Addr(), "pid": os.Getpid()}
	if token != "" {
		info["token"] = token
	}
	return writeJSONFile(path, info)
}

// writeJSONFile replaces path with v as JSON, readable by this user only, atomically (readers
// see the old file or the whole new one).
func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// watchGossip turns gossip's dead and left workers into scheduler events; a broken control
// stream is the other signal, and either one starts recovery.
func (sp *schedProc) watchGossip() {
	for ev := range sp.gossip.Events() {
		if ev.Node.Meta.Role != "worker" || ev.Node.Meta.Data == "" {
			continue
		}
		switch ev.Type {
		case member.EventDead:
			sp.srv.ReportGossipDead(ev.Node.Meta.Data, "gossip: stopped answering probes (timeout)")
		case member.EventLeave:
			sp.srv.ReportGossipDead(ev.Node.Meta.Data, "gossip: left the cluster")
		}
	}
}

func (sp *schedProc) wait() error {
	err := <-sp.done
	sp.close()
	return err
}

func (sp *schedProc) close() {
	if sp.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		sp.http.Shutdown(ctx)
		cancel()
	}
	if sp.stopDash != nil {
		sp.stopDash()
	}
	if sp.gossip != nil {
		sp.gossip.Leave(time.Second)
		sp.gossip.Shutdown()
	}
	if sp.schedFile != "" {
		os.Remove(sp.schedFile)
	}
	sp.srv.Close()
}
