package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// defaultEvents and maxEvents bound /api/v1/events?n=.
const (
	defaultEvents = 200
	maxEvents     = 10000
)

// apiError is the body of every non-2xx API answer.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		status, data = http.StatusInternalServerError, []byte(`{"error":"encoding response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{Error: msg})
}

// sourceFailed answers an error from the Source: 404 for ErrNotFound, 503 otherwise.
func sourceFailed(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNotFound) {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	writeError(w, http.StatusServiceUnavailable, err.Error())
}

func (s *Server) callCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.CallTimeout)
}

// WorkersResponse is the body of GET /api/v1/workers.
type WorkersResponse struct {
	Workers []WorkerStatus `json:"workers"`
	Memory  ClusterMemory  `json:"memory"`
}

func (s *Server) apiWorkers(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.callCtx(r)
	defer cancel()
	snap, err := s.cfg.Source.Snapshot(ctx)
	if err != nil {
		sourceFailed(w, err)
		return
	}
	writeJSON(w, http.StatusOK, WorkersResponse{Workers: nonNil(snap.Workers), Memory: clusterMemory(snap.Workers)})
}

// GroupsResponse is the body of GET /api/v1/groups.
type GroupsResponse struct {
	Groups []GroupProgress `json:"groups"`
	Totals Totals          `json:"totals"`
}

func (s *Server) apiGroups(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.callCtx(r)
	defer cancel()
	snap, err := s.cfg.Source.Snapshot(ctx)
	if err != nil {
		sourceFailed(w, err)
		return
	}
	writeJSON(w, http.StatusOK, GroupsResponse{Groups: nonNil(snap.Groups), Totals: snap.Totals})
}

func (s *Server) apiTask(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if key == "" {
		writeError(w, http.StatusNotFound, "dashboard: empty key")
		return
	}
	ctx, cancel := s.callCtx(r)
	defer cancel()
	t, err := s.cfg.Source.Task(ctx, key)
	if err != nil {
		sourceFailed(w, err)
		return
	}
	t.Deps, t.Story = nonNil(t.Deps), nonNil(t.Story)
	writeJSON(w, http.StatusOK, t)
}

// apiStack answers {worker, lines}: the call stack of a running task, read from its worker now.
func (s *Server) apiStack(w http.ResponseWriter, r *http.Request) {
	cs, ok := s.cfg.Source.(CallStacker)
	if !ok {
		writeError(w, http.StatusNotImplemented, "dashboard: this source cannot read call stacks")
		return
	}
	ctx, cancel := s.callCtx(r)
	defer cancel()
	worker, lines, err := cs.CallStack(ctx, r.PathValue("key"))
	switch {
	case errors.Is(err, ErrNotRunning):
		writeError(w, http.StatusNotFound, "the task is not running: only a running task has a call stack")
		return
	case err != nil:
		sourceFailed(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"worker": worker, "lines": nonNil(lines)})
}

func (s *Server) apiGraph(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.callCtx(r)
	defer cancel()
	g, err := s.cfg.Source.GroupGraph(ctx)
	if err != nil {
		sourceFailed(w, err)
		return
	}
	g.Nodes, g.Edges = nonNil(g.Nodes), nonNil(g.Edges)
	writeJSON(w, http.StatusOK, g)
}

// EventsResponse is the body of GET /api/v1/events?n=N.
type EventsResponse struct {
	Events []Event `json:"events"`
}

func (s *Server) apiEvents(w http.ResponseWriter, r *http.Request) {
	n := defaultEvents
	if q := r.URL.Query().Get("n"); q != "" {
		v, err := strconv.Atoi(q)
		if err != nil || v < 0 {
			writeError(w, http.StatusBadRequest, "dashboard: n must be a non-negative integer, got "+strconv.Quote(q))
			return
		}
		n = min(v, maxEvents)
	}
	ctx, cancel := s.callCtx(r)
	defer cancel()
	evs, err := s.cfg.Source.Events(ctx, n)
	if err != nil {
		sourceFailed(w, err)
		return
	}
	writeJSON(w, http.StatusOK, EventsResponse{Events: nonNil(evs)})
}
