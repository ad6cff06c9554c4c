package cli

import (
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/shoal-dev/shoal/dashboard"
	"github.com/shoal-dev/shoal/worker"
	"golang.org/x/net/netutil"
)

// serveWorkerMetrics serves a worker's /metrics when port >= 0.
func serveWorkerMetrics(w *worker.Worker, host string, port int, token string, log *slog.Logger) (func(), error) {
	if port < 0 {
		return func() {}, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(w.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := newHTTPServer(dashboard.RequireToken(mux, token))
	go srv.Serve(limitHTTP(ln))
	log.Info("worker metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() { srv.Close() }, nil
}

// maxHTTPConns bounds the open connections of an HTTP port (dashboard, metrics); more wait
// in the kernel's backlog until one closes.
const maxHTTPConns = 256

func limitHTTP(ln net.Listener) net.Listener { return netutil.LimitListener(ln, maxHTTPConns) }

// newHTTPServer bounds what a client of an HTTP port can hold: a request's headers must arrive
// within 10 s and its body within 30 s, an idle keep-alive connection is closed after 2 min,
// and headers are at most 64 KiB. (No write timeout: the dashboard's websocket lives long.)
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
}

// tokenLink is the dashboard link given to clients that presented the token: it carries the
// token, so that opening it logs the browser in (the page then drops it from the address).
func tokenLink(dashboardURL, token string) string {
	if token == "" || dashboardURL == "" {
		return dashboardURL
	}
	return dashboardURL + "?token=" + url.QueryEscape(token)
}
