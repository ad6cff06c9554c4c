package dashboard

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server serves the dashboard: the web app, its websocket, the JSON API, /health and
// /metrics. Create it with New, mount Handler, and Close it before the Source goes away.
type Server struct {
	cfg  Config
	log  *slog.Logger
	hub  *hub
	mux  *http.ServeMux
	up   websocket.Upgrader
	stop context.CancelFunc
	wg   sync.WaitGroup
	mu   struct {
		sync.Mutex
		closed bool
	}
	// the page's profiler switch (report.go)
	profMu sync.Mutex
	profOn bool
}

// New validates cfg and starts the server's hub goroutine (which is idle, and touches nothing
// on the Source, until a browser connects).
func New(cfg Config) (*Server, error) {
	return newServer(cfg, newRealTicker)
}

func newServer(cfg Config, nt func(time.Duration) ticker) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	m := newMetrics()
	if err := m.register(cfg.Registry); err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{
		cfg:  cfg,
		log:  log,
		hub:  newHub(cfg, log, m, nt),
		stop: stop,
		up:   websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 32 << 10},
	}
	s.routes()
	s.goFunc(func() { s.hub.run(ctx) })
	return s, nil
}

// Handler returns the handler serving every dashboard path from the root: mount it at "/" or,
// under a prefix, with http.StripPrefix (the page uses relative URLs only).
func (s *Server) Handler() http.Handler { return s.mux }

// Close disconnects every viewer and waits for all of the server's goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.mu.closed = true
	s.mu.Unlock()
	s.stop()
	s.wg.Wait()
	s.profMu.Lock()
	defer s.profMu.Unlock()
	if rec, ok := s.cfg.Source.(Recorder); ok && s.profOn {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CallTimeout)
		defer cancel()
		_ = rec.Profiling(ctx, false)
		s.profOn = false
	}
	return nil
}

// track counts one more goroutine for Close to wait on; false once Close has begun.
func (s *Server) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// goFunc starts f on a goroutine that Close waits for; false (and f not run) after Close.
func (s *Server) goFunc(f func()) bool {
	if !s.track() {
		return false
	}
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	s.mux.Handle("GET /", staticHandler())
	s.mux.HandleFunc("GET /ws", s.serveWS)
	s.mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
	})
	s.mux.HandleFunc("GET /api/v1/workers", s.apiWorkers)
	s.mux.HandleFunc("GET /api/v1/groups", s.apiGroups)
	s.mux.HandleFunc("GET /api/v1/tasks/{key...}", s.apiTask)
	s.mux.HandleFunc("GET /api/v1/stack/{key...}", s.apiStack)
	s.mux.HandleFunc("GET /api/v1/graph", s.apiGraph)
	s.mux.HandleFunc("GET /api/v1/events", s.apiEvents)
	s.mux.HandleFunc("GET /api/v1/report", s.apiReport)
	s.mux.HandleFunc("GET /api/v1/task-stream", s.apiTaskStream)
	s.mux.HandleFunc("GET /api/v1/profile", s.apiProfile)
	s.mux.HandleFunc("POST /api/v1/profile", s.apiProfiling)
	s.mux.HandleFunc("GET /api/", func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint")
	})
	if s.cfg.Registry != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	}
}

// serveWS upgrades to a websocket and runs one viewer: this goroutine reads (and discards)
// what the browser sends so that a close is noticed; a writer goroutine drains the viewer's
// bounded queue onto the socket.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	conn, err := s.up.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has answered the request
	}
	if !s.track() {
		_ = conn.Close()
		return
	}
	defer s.wg.Done()
	v := newViewer(s.cfg.ViewerQueue)
	if !s.hub.join(v) {
		_ = conn.Close()
		return
	}
	if !s.goFunc(func() { s.writeLoop(conn, v) }) {
		s.hub.leave(v)
		_ = conn.Close()
		return
	}
	conn.SetReadLimit(4 << 10)
	for {
		if _, _, err := conn.NextReader(); err != nil {
			break
		}
	}
	s.hub.leave(v)
	_ = conn.Close()
}

// writeLoop sends each queued frame wrapped with the viewer's drop count, until the hub closes
// the queue or a write fails.
func (s *Server) writeLoop(conn *websocket.Conn, v *viewer) {
	defer conn.Close()
	for data := range v.send {
		if err := s.writeFrame(conn, v.dropped.Load(), data); err != nil {
			s.log.Debug("dashboard: viewer write failed", "err", err)
			return
		}
	}
	_ = conn.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseGoingAway, "dashboard closing"),
		time.Now().Add(time.Second))
}

func (s *Server) writeFrame(conn *websocket.Conn, dropped uint64, data []byte) error {
	if err := conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)); err != nil {
		return err
	}
	w, err := conn.NextWriter(websocket.TextMessage)
	if err != nil {
		return err
	}
	var head [64]byte
	b := append(head[:0], `{"dropped":`...)
	b = strconv.AppendUint(b, dropped, 10)
	b = append(b, `,"frame":`...)
	if _, err := w.Write(b); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	if _, err := w.Write([]byte{'}'}); err != nil {
		return err
	}
	return w.Close()
}
