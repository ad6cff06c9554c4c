package dashboard

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func get(t *testing.T, h *harness, path string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Get(h.web.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, body
}

// getJSON fetches path and decodes it into a generic map, so the tests check the JSON shape
// a browser sees rather than the Go types.
func getJSON(t *testing.T, h *harness, path string, wantStatus int) map[string]any {
	t.Helper()
	status, hdr, body := get(t, h, path)
	require.Equal(t, wantStatus, status, "body: %s", body)
	require.Equal(t, "application/json", hdr.Get("Content-Type"))
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m), "body: %s", body)
	return m
}

func TestHealth(t *testing.T) {
	h := newHarness(t)
	status, _, body := get(t, h, "/health")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, "ok", string(body))
	assert.Zero(t, h.src.calls(), "/health must not touch the Source")
}

func TestWorkers(t *testing.T) {
	h := newHarness(t)
	m := getJSON(t, h, "/api/v1/workers", http.StatusOK)
	workers := m["workers"].([]any)
	require.Len(t, workers, 2)
	w0 := workers[0].(map[string]any)
	for _, k := range []string{"name", "address", "nthreads", "memory_limit", "memory", "spilled",
		"executing", "cpu", "bytes_sent", "bytes_received", "last_seen", "processing"} {
		assert.Contains(t, w0, k)
	}
	assert.Equal(t, "w0", w0["name"])
	assert.Equal(t, "127.0.0.1:9000", w0["address"])
	assert.EqualValues(t, 3, w0["processing"])
	assert.Equal(t, map[string]any{"used": 400.0, "managed": 0.0, "limit": 3000.0, "spilled": 5.0}, m["memory"])
}

func TestGroups(t *testing.T) {
	h := newHarness(t)
	m := getJSON(t, h, "/api/v1/groups", http.StatusOK)
	groups := m["groups"].([]any)
	require.Len(t, groups, 2)
	g := groups[0].(map[string]any)
	assert.Equal(t, "load", g["name"])
	for k, v := range map[string]float64{"total": 4, "done": 2, "memory": 2, "processing": 1,
		"waiting": 1, "queued": 0, "erred": 0, "released": 0, "no_worker": 0, "nbytes": 64} {
		assert.Equal(t, v, g[k], k)
	}
	assert.EqualValues(t, 5, m["totals"].(map[string]any)["tasks"])
}

func TestEmptyListsAreArrays(t *testing.T) {
	h := newHarness(t)
	h.src.setSnapshot(func(s *Snapshot) { s.Workers, s.Groups = nil, nil })
	_, _, body := get(t, h, "/api/v1/workers")
	assert.Contains(t, string(body), `"workers":[]`)
	_, _, body = get(t, h, "/api/v1/groups")
	assert.Contains(t, string(body), `"groups":[]`)
	_, _, body = get(t, h, "/api/v1/graph")
	assert.JSONEq(t, `{"nodes":[],"edges":[]}`, string(body))
	_, _, body = get(t, h, "/api/v1/events")
	assert.JSONEq(t, `{"events":[]}`, string(body))
}

func TestTask(t *testing.T) {
	h := newHarness(t)
	key := "('sum/part', 3) ?#%" // a Dask-style key with characters that need escaping
	h.src.mu.tasks[key] = TaskInfo{
		Key: key, Group: "sum", State: "erred", Worker: "127.0.0.1:9000", Start: 10, Stop: 20,
		Deps:  []TaskDep{{Key: "load-1", State: "memory", NBytes: 64, WhoHas: []string{"127.0.0.1:9001"}}},
		Story: []Transition{{Time: 5, From: "waiting", To: "processing", Cause: "placed", EventID: 7}},
		Error: &TaskError{Code: "task-error", Type: "ValueError", Message: "boom", Traceback: "Traceback ..."},
	}
	m := getJSON(t, h, "/api/v1/tasks/"+url.PathEscape(key), http.StatusOK)
	assert.Equal(t, key, m["key"])
	assert.Equal(t, "erred", m["state"])
	assert.Equal(t, []any{map[string]any{"key": "load-1", "state": "memory", "nbytes": 64.0, "who_has": []any{"127.0.0.1:9001"}}}, m["deps"])
	story := m["story"].([]any)[0].(map[string]any)
	assert.Equal(t, "processing", story["to"])
	assert.Equal(t, "placed", story["cause"])
	assert.Equal(t, map[string]any{"code": "task-error", "type": "ValueError", "message": "boom", "traceback": "Traceback ..."}, m["error"])
}

func TestTaskWithoutDepsHasEmptyLists(t *testing.T) {
	h := newHarness(t)
	h.src.mu.tasks["x"] = TaskInfo{Key: "x", State: "waiting"}
	_, _, body := get(t, h, "/api/v1/tasks/x")
	assert.Contains(t, string(body), `"deps":[]`)
	assert.Contains(t, string(body), `"story":[]`)
}

func TestTaskUnknownIs404JSON(t *testing.T) {
	h := newHarness(t)
	m := getJSON(t, h, "/api/v1/tasks/nope", http.StatusNotFound)
	assert.Contains(t, m["error"], "not found")
}

func TestUnknownAPIIs404JSON(t *testing.T) {
	h := newHarness(t)
	m := getJSON(t, h, "/api/v1/nothing", http.StatusNotFound)
	assert.NotEmpty(t, m["error"])
}

func TestGraph(t *testing.T) {
	h := newHarness(t)
	h.src.mu.graph = GroupGraph{
		Nodes: []GroupProgress{{Name: "load", Total: 4}, {Name: "sum", Total: 1}},
		Edges: []GroupEdge{{From: "load", To: "sum"}},
	}
	m := getJSON(t, h, "/api/v1/graph", http.StatusOK)
	assert.Len(t, m["nodes"], 2)
	assert.Equal(t, []any{map[string]any{"from": "load", "to": "sum"}}, m["edges"])
}

func TestEvents(t *testing.T) {
	h := newHarness(t)
	for i := range 5 {
		h.src.log.Add(Event{Kind: EventWorkerLeft, Time: int64(i), Worker: "127.0.0.1:9000", Reason: "heartbeat timeout"})
	}
	m := getJSON(t, h, "/api/v1/events?n=3", http.StatusOK)
	evs := m["events"].([]any)
	require.Len(t, evs, 3)
	last := evs[2].(map[string]any)
	assert.Equal(t, "worker-left", last["kind"])
	assert.Equal(t, "heartbeat timeout", last["reason"])
	assert.EqualValues(t, 4, last["time"])

	getJSON(t, h, "/api/v1/events?n=-1", http.StatusBadRequest)
	getJSON(t, h, "/api/v1/events?n=x", http.StatusBadRequest)
}

func TestSourceErrorIs503(t *testing.T) {
	h := newHarness(t)
	h.src.mu.snapErr = errors.New("scheduler: shutting down")
	m := getJSON(t, h, "/api/v1/workers", http.StatusServiceUnavailable)
	assert.Contains(t, m["error"], "shutting down")
}

func TestMetrics(t *testing.T) {
	h := newHarness(t)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_test_total", Help: "test"})
	h.reg.MustRegister(c)
	c.Add(3)
	status, _, body := get(t, h, "/metrics")
	require.Equal(t, http.StatusOK, status)
	assert.Contains(t, string(body), "shoal_test_total 3")
	assert.Contains(t, string(body), "shoal_dashboard_viewers 0")
}

func TestMetricsWithoutRegistry(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Registry = nil })
	status, _, _ := get(t, h, "/metrics")
	assert.Equal(t, http.StatusNotFound, status)
}

func TestOneServerPerRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.Source, cfg.Registry = newFakeSource(), reg
	s, err := New(cfg)
	require.NoError(t, err)
	defer s.Close()
	_, err = New(cfg)
	assert.ErrorContains(t, err, "already registered")
}

func TestApp(t *testing.T) {
	h := newHarness(t)
	status, hdr, body := get(t, h, "/")
	require.Equal(t, http.StatusOK, status)
	assert.True(t, strings.HasPrefix(hdr.Get("Content-Type"), "text/html"))
	assert.Contains(t, string(body), `<title>Shoal dashboard</title>`)
	assert.Equal(t, "no-cache", hdr.Get("Cache-Control"))
	for _, p := range []string{"/style.css", "/js/app.js", "/js/status.js", "/js/workers.js", "/js/graph.js", "/js/task.js", "/js/events.js"} {
		status, _, _ := get(t, h, p)
		assert.Equal(t, http.StatusOK, status, p)
	}
	status, _, _ = get(t, h, "/nope.js")
	assert.Equal(t, http.StatusNotFound, status)
	assert.Zero(t, h.src.calls(), "serving the app must not touch the Source")
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	assert.ErrorContains(t, cfg.Validate(), "Source is nil")
	cfg.Source = newFakeSource()
	require.NoError(t, cfg.Validate())
	cfg.MaxUpdatesPerSecond = 0
	assert.ErrorContains(t, cfg.Validate(), "MaxUpdatesPerSecond 0")
	_, err := New(cfg)
	assert.Error(t, err)
}
