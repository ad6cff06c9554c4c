package cli

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/shoal-dev/shoal/dashboard"
	"github.com/shoal-dev/shoal/scheduler"
)

// httpHandler serves the dashboard, /metrics, /api/v1 and /health for the scheduler. It wires
// the two packages: the scheduler publishes its events to the dashboard's adapter through
// srv.SetListener (so it must run before srv.Serve), and the scheduler never imports the
// dashboard. The returned func disconnects viewers; call it before the scheduler closes.
func httpHandler(srv *scheduler.Server, log *slog.Logger, token string) (http.Handler, func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(srv.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	src := dashboard.NewSchedulerSource(srv)
	srv.SetListener(src.Listener())
	cfg := dashboard.DefaultConfig()
	cfg.Source, cfg.Registry, cfg.Logger = src, reg, log
	d, err := dashboard.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return dashboard.RequireToken(d.Handler(), token), func() { d.Close() }, nil
}
