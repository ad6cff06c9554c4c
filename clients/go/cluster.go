package shoal

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/cli"
)

// EnvClusterProcess is set to "1" in the environment of every process NewLocalCluster starts
// (the `local` process, and through it the workers). Main sees it and runs the Shoal command
// line instead of the program. Set it yourself to run a program as a process of a remote
// cluster with its functions: EnvClusterProcess=1 ./myprog worker --join HOST:7946.
const EnvClusterProcess = "SHOAL_CLUSTER_PROCESS"

// Main makes this program its own cluster binary. Call it first thing in main: in a process
// started as a cluster process (EnvClusterProcess), it runs the Shoal command line (`local`,
// `scheduler`, `worker`, as the stock shoal binary does) with the functions this program
// registered, and exits; otherwise it returns at once and the program goes on. A test binary
// calls it from TestMain, before m.Run.
func Main() {
	if os.Getenv(EnvClusterProcess) != "1" {
		return
	}
	cli.Main()
	os.Exit(0)
}

// ClusterOption configures NewLocalCluster.
type ClusterOption func(*clusterConfig)

type clusterConfig struct {
	workers, threads int
	python           string
	memoryLimit      string
	output           io.Writer
	args             []string
	timeout          time.Duration
	binary           string
}

// Workers sets the number of worker processes (default 2).
func Workers(n int) ClusterOption { return func(c *clusterConfig) { c.workers = n } }

// Threads sets how many tasks each worker runs at once (default 1).
func Threads(n int) ClusterOption { return func(c *clusterConfig) { c.threads = n } }

// PythonExecutable sets the interpreter the workers run Python tasks with (default:
// $SHOAL_PYTHON, else python3). It must be able to import shoal.
func PythonExecutable(path string) ClusterOption { return func(c *clusterConfig) { c.python = path } }

// MemoryLimit sets each worker's memory limit, e.g. "2GiB" (default: total memory divided by
// the number of workers; "0": none).
func MemoryLimit(limit string) ClusterOption { return func(c *clusterConfig) { c.memoryLimit = limit } }

// ClusterOutput copies the cluster processes' logs to w (default: a file in the cluster's
// temporary directory, quoted in errors).
func ClusterOutput(w io.Writer) ClusterOption { return func(c *clusterConfig) { c.output = w } }

// ClusterArgs passes more flags to `shoal local` (see `shoal local --help`), e.g.
// ClusterArgs("--log-level", "debug").
func ClusterArgs(args ...string) ClusterOption {
	return func(c *clusterConfig) { c.args = append(c.args, args...) }
}

// StartTimeout bounds how long NewLocalCluster waits for every worker to register (default
// 60 s).
func StartTimeout(d time.Duration) ClusterOption { return func(c *clusterConfig) { c.timeout = d } }

// Binary runs the cluster from another executable instead of this program (os.Executable):
// the stock shoal binary, or a worker binary built with cli.Main. Only the functions that
// binary registers can run on the cluster; the scheduler refuses graphs calling others.
func Binary(path string) ClusterOption { return func(c *clusterConfig) { c.binary = path } }

// LocalCluster is a scheduler and worker processes on this machine, started from this
// program's own executable, and a client connected to it.
type LocalCluster struct {
	cmd       *exec.Cmd
	dir       string
	logPath   string
	client    *Client
	scheduler string
	dashboard string
	exited    chan struct{} // closed once cmd has been waited for
	closeOnce sync.Once
}

// NewLocalCluster starts a local cluster by running this program's executable as `shoal
// local` (a scheduler and Workers worker processes, real sockets on 127.0.0.1, a random
// token), waits until every worker registered, and connects a client. The program must call
// Main at the top of main (or TestMain), so that the processes it starts become the
// cluster. ctx bounds the start only. Close stops every process; if this process dies without
// Close, the cluster notices within a fraction of a second and stops itself.
func NewLocalCluster(ctx context.Context, opts ...ClusterOption) (*LocalCluster, error) {
	cfg := clusterConfig{workers: 2, threads: 1, timeout: 60 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	bin := cfg.binary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("shoal: local cluster: %w", err)
		}
	}
	dir, err := os.MkdirTemp("", "shoal-cluster-")
	if err != nil {
		return nil, fmt.Errorf("shoal: local cluster: %w", err)
	}
	lc := &LocalCluster{dir: dir, logPath: filepath.Join(dir, "cluster.log"), exited: make(chan struct{})}
	if err := lc.start(ctx, bin, cfg); err != nil {
		lc.Close()
		return nil, err
	}
	return lc, nil
}

func (lc *LocalCluster) start(ctx context.Context, bin string, cfg clusterConfig) error {
	token := randomHex(16)
	tokenFile := filepath.Join(lc.dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return fmt.Errorf("shoal: local cluster: %w", err)
	}
	ready := filepath.Join(lc.dir, "ready.json")
	args := []string{"local", "--workers", strconv.Itoa(cfg.workers), "--nthreads", strconv.Itoa(cfg.threads),
		"--host", "127.0.0.1", "--port", "0", "--gossip-port", "0", "--dashboard-port", "0",
		"--token-file", tokenFile, "--ready-file", ready, "--local-dir", lc.dir, "--log-level", "warn",
		"--parent-pid", strconv.Itoa(os.Getpid()), "--parent-dir", lc.dir}
	if cfg.python != "" {
		args = append(args, "--python", cfg.python)
	}
	if cfg.memoryLimit != "" {
		args = append(args, "--memory-limit", cfg.memoryLimit)
	}
	args = append(args, cfg.args...)
	logf, err := os.Create(lc.logPath)
	if err != nil {
		return fmt.Errorf("shoal: local cluster: %w", err)
	}
	defer logf.Close() // the children hold their own descriptors
	var out io.Writer = logf
	if cfg.output != nil {
		out = io.MultiWriter(logf, cfg.output)
	}
	lc.cmd = exec.Command(bin, args...)
	lc.cmd.Env = append(os.Environ(), EnvClusterProcess+"=1")
	lc.cmd.Stdout, lc.cmd.Stderr = out, out
	// its own process group, so that Close can stop every process it started, whatever
	// happened to the `local` process itself
	lc.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := lc.cmd.Start(); err != nil {
		close(lc.exited)
		return fmt.Errorf("shoal: local cluster: start %s: %w", bin, err)
	}
	go func() { lc.cmd.Wait(); close(lc.exited) }()
	info, err := lc.waitReady(ctx, ready, cfg.timeout)
	if err != nil {
		return err
	}
	lc.scheduler, lc.dashboard = info.Scheduler, info.Dashboard
	c, err := Connect(ctx, info.Scheduler, Options{Token: token})
	if err != nil {
		return err
	}
	lc.client = c
	return nil
}

type readyInfo struct {
	Scheduler string   `json:"scheduler"`
	Dashboard string   `json:"dashboard"`
	Workers   []string `json:"workers"`
}

// waitReady polls for the ready file `shoal local` writes once every worker registered.
func (lc *LocalCluster) waitReady(ctx context.Context, path string, timeout time.Duration) (readyInfo, error) {
	var info readyInfo
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &info) == nil {
			return info, nil
		}
		select {
		case <-ctx.Done():
			return info, ctx.Err()
		case <-deadline.C:
			return info, fmt.Errorf("shoal: local cluster not ready within %v:\n%s", timeout, lc.logTail())
		case <-lc.exited:
			return info, fmt.Errorf("shoal: local cluster exited (%v) before it was ready; is shoal.Main() called first thing in main (or TestMain)?\n%s",
				lc.cmd.ProcessState, lc.logTail())
		case <-tick.C:
		}
	}
}

// Client is the client connected to the cluster; Close closes it.
func (lc *LocalCluster) Client() *Client { return lc.client }

// Scheduler is the scheduler's control address.
func (lc *LocalCluster) Scheduler() string { return lc.scheduler }

// DashboardURL is the dashboard's address.
func (lc *LocalCluster) DashboardURL() string { return lc.dashboard }

// Logs returns what the cluster's processes wrote so far.
func (lc *LocalCluster) Logs() string {
	b, _ := os.ReadFile(lc.logPath)
	return string(b)
}

func (lc *LocalCluster) logTail() string {
	b := []byte(lc.Logs())
	if len(b) > 4000 {
		b = b[len(b)-4000:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// Close closes the client and stops every process of the cluster: SIGTERM to `shoal local`,
// which stops its workers (they finish running tasks for up to 10 s), then SIGKILL to the
// whole process group after 15 s. It removes the cluster's temporary directory. Calling it
// again does nothing.
func (lc *LocalCluster) Close() error {
	lc.closeOnce.Do(func() {
		if lc.client != nil {
			lc.client.Close()
		}
		if lc.cmd != nil && lc.cmd.Process != nil {
			pgid := lc.cmd.Process.Pid
			syscall.Kill(pgid, syscall.SIGTERM)
			select {
			case <-lc.exited:
			case <-time.After(15 * time.Second):
			}
			syscall.Kill(-pgid, syscall.SIGKILL) // anything left in the group
			<-lc.exited
		}
		os.RemoveAll(lc.dir)
	})
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(errors.New("shoal: no randomness: " + err.Error()))
	}
	return hex.EncodeToString(b)
}
