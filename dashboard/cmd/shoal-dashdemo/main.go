// Command shoal-dashdemo serves the dashboard over a simulated cluster (dashboard/internal/sim)
// so the web page can be developed and tested without a scheduler:
//
//	go run ./dashboard/cmd/shoal-dashdemo --port 8787
//
// It prints "dashboard: http://127.0.0.1:PORT/" once listening. With --once the simulated graph
// runs to completion a single time and the process keeps serving until interrupted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-dev/shoal/dashboard"
	"github.com/shoal-dev/shoal/dashboard/internal/sim"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "shoal-dashdemo:", err)
		os.Exit(1)
	}
}

func run() error {
	port := flag.Int("port", 8787, "HTTP port (0 picks a free one)")
	workers := flag.Int("workers", 2, "simulated workers")
	threads := flag.Int("threads", 2, "threads per worker")
	width := flag.Int("width", 64, "tasks per wide layer of the simulated graph")
	taskTime := flag.Duration("task-time", 60*time.Millisecond, "mean task duration")
	once := flag.Bool("once", false, "run the graph once instead of looping")
	flag.Parse()

	s := sim.New(sim.Config{
		Workers: *workers, Threads: *threads, Width: *width, TaskTime: *taskTime,
		Failures: 0.05, Loop: !*once, Seed: uint64(time.Now().UnixNano()),
	})
	defer s.Close()
	reg := prometheus.NewRegistry()
	cfg := dashboard.DefaultConfig()
	cfg.Source, cfg.Registry = s, reg
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	d, err := dashboard.New(cfg)
	if err != nil {
		return err
	}
	defer d.Close()

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		return err
	}
	fmt.Printf("dashboard: http://%s/\n", ln.Addr())
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
