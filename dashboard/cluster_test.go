package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/dashboard"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/shoal-dev/shoal/scheduler"
	"github.com/stretchr/testify/require"
)

// The one fake cluster of the dashboard's tests and benchmarks: a real scheduler.Server (driver,
// core, wire) on a real port, wired to the dashboard exactly as `shoal scheduler` wires it, with
// fake workers over real sockets that "run" every compute at once on one of their threads and
// report a result of resultBytes bytes.
type cluster struct {
	srv     *scheduler.Server
	src     *dashboard.SchedulerSource
	client  *client.Client
	workers []*fakeWorker
}

const resultBytes = 1000

type fakeWorker struct {
	conn     *wire.Conn
	nthreads int
	computes atomic.Int64
}

func startCluster(tb testing.TB, nworkers, nthreads int) *cluster {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := scheduler.DefaultServerConfig()
	cfg.Port = 0
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := scheduler.NewServer(cfg)
	require.NoError(tb, err)
	c := &cluster{srv: srv, src: dashboard.NewSchedulerSource(srv)}
	srv.SetListener(c.src.Listener())
	served := make(chan struct{})
	go func() { srv.Serve(ctx); close(served) }()
	tb.Cleanup(func() { cancel(); srv.Close(); <-served })
	for i := range nworkers {
		w := startFakeWorker(tb, ctx, srv.Addr(), i, nthreads)
		c.workers = append(c.workers, w)
	}
	cl, err := client.Connect(ctx, srv.Addr(), client.Options{})
	require.NoError(tb, err)
	tb.Cleanup(func() { cl.Close() })
	c.client = cl
	for {
		ws, err := cl.Info(ctx)
		require.NoError(tb, err)
		if len(ws) >= nworkers {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return c
}

func startFakeWorker(tb testing.TB, ctx context.Context, addr string, i, nthreads int) *fakeWorker {
	conn, err := wire.Dial(ctx, addr, wire.DialOptions{Role: wire.RoleWorker})
	require.NoError(tb, err)
	require.NoError(tb, conn.Send(&wire.Msg{Op: wire.OpRegister, Name: fmt.Sprintf("fake-%d", i),
		DataAddr: fmt.Sprintf("127.0.0.1:%d", 41000+i), NThreads: nthreads, MemLimit: 1 << 30,
		Functions: []string{"noop"}, Version: "test", PID: os.Getpid()}))
	m, _, err := conn.Recv()
	require.NoError(tb, err)
	require.Equal(tb, wire.OpRegistered, m.Op)
	w := &fakeWorker{conn: conn, nthreads: nthreads}
	go w.serve()
	tb.Cleanup(func() { conn.Abort() })
	return w
}

func (w *fakeWorker) serve() {
	for {
		m, _, err := w.conn.Recv()
		if err != nil {
			return
		}
		switch m.Op {
		case wire.OpCompute:
			n := w.computes.Add(1)
			now := time.Now().UnixNano()
			w.conn.Send(&wire.Msg{Op: wire.OpTaskFinished, Key: m.Task.Key, TaskID: m.TaskID, NBytes: resultBytes,
				Encoding: wire.EncMsgpack, Start: now - 1000, Stop: now, Thread: int(n) % w.nthreads})
		case wire.OpStealRequest:
			w.conn.Send(&wire.Msg{Op: wire.OpStealResponse, Key: m.Key, Accepted: false})
		case wire.OpClose:
			return
		}
	}
}

// run submits n no-op tasks of group prefix and waits for them; the futures are returned held.
func (c *cluster) run(tb testing.TB, prefix string, n int) []*client.Future {
	tb.Helper()
	ctx := context.Background()
	g := client.NewGraph()
	keys := make([]client.Key, n)
	for i := range keys {
		keys[i] = g.Go(fmt.Sprintf("%s-%d", prefix, i), "noop")
	}
	fs, err := c.client.Submit(ctx, g, keys...)
	require.NoError(tb, err)
	for _, f := range fs {
		require.NoError(tb, f.Wait(ctx))
	}
	return fs
}

// Every task the scheduler runs reaches the adapter as one task event with its worker, thread
// and times; the snapshot counts it and shows the held results as the workers' managed bytes.
func TestSchedulerSourceSeesEveryTask(t *testing.T) {
	c := startCluster(t, 2, 2)
	events, cancel := c.src.Subscribe(10000)
	defer cancel()
	const n = 3000
	futs := c.run(t, "inc", n)

	got := map[string]bool{}
	deadline := time.After(30 * time.Second) // only a bound on a hang, not a measurement
	for len(got) < n {
		select {
		case e := <-events:
			if e.Kind == dashboard.EventTask {
				require.Equal(t, "inc", e.Group)
				require.Equal(t, "memory", e.State)
				require.NotEmpty(t, e.Worker)
				require.Less(t, e.Thread, 2)
				require.Positive(t, e.Stop-e.Start)
				got[e.Key] = true
			}
		case <-deadline:
			t.Fatalf("saw %d of %d task events", len(got), n)
		}
	}
	snap, err := c.src.Snapshot(context.Background())
	require.NoError(t, err)
	require.Len(t, snap.Workers, 2)
	var managed int64
	for _, w := range snap.Workers {
		managed += w.Managed
	}
	require.EqualValues(t, n*resultBytes, managed, "held results count as managed memory")
	require.GreaterOrEqual(t, snap.Totals.Completed, uint64(n))
	require.Zero(t, snap.EventsDropped)
	for _, f := range futs {
		f.Release()
	}
	// released results leave the workers' managed memory
	require.Eventually(t, func() bool {
		s, err := c.src.Snapshot(context.Background())
		return err == nil && s.Workers[0].Managed+s.Workers[1].Managed == 0
	}, 30*time.Second, 10*time.Millisecond)

	evs, err := c.src.Events(context.Background(), 10)
	require.NoError(t, err)
	joined := 0
	for _, e := range evs {
		if e.Kind == dashboard.EventWorkerJoined {
			joined++
		}
	}
	require.Equal(t, 2, joined, "worker joins reach the event log")
}

// startDashboard serves the dashboard over c (real ticker) and connects viewers websockets
// that read every frame. With count, the first decodes them and the returned func gives the
// task-stream coverage it saw (task events counted one by one or through their spans) and the
// frames it lost.
func (c *cluster) startDashboard(tb testing.TB, viewers int, count bool) func() (covered, dropped int) {
	tb.Helper()
	cfg := dashboard.DefaultConfig()
	cfg.Source = c.src
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := dashboard.New(cfg)
	require.NoError(tb, err)
	web := httptest.NewServer(d.Handler())
	tb.Cleanup(func() { web.Close(); d.Close() })
	var covered, dropped atomic.Int64
	for i := range viewers {
		ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(web.URL, "http")+"/ws", nil)
		require.NoError(tb, err)
		tb.Cleanup(func() { ws.Close() })
		go func() {
			if !count || i > 0 { // the others only load the hub, reading frames as a browser would
				for {
					if _, r, err := ws.NextReader(); err != nil {
						return
					} else if _, err := io.Copy(io.Discard, r); err != nil {
						return
					}
				}
			}
			for {
				var env struct {
					Dropped int `json:"dropped"`
					Frame   struct {
						Events []dashboard.Event `json:"events"`
					} `json:"frame"`
				}
				if ws.ReadJSON(&env) != nil {
					return
				}
				dropped.Store(int64(env.Dropped))
				for _, e := range env.Frame.Events {
					switch {
					case e.Kind == dashboard.EventTask && e.Count > 0:
						covered.Add(int64(e.Count))
					case e.Kind == dashboard.EventTask:
						covered.Add(1)
					}
				}
			}
		}()
	}
	return func() (int, int) { return int(covered.Load()), int(dropped.Load()) }
}

// The websocket carries every task the scheduler ran, one by one or in aggregate spans, even
// when far more tasks finish per frame than a frame carries one by one.
func TestTaskStreamCarriesEveryTask(t *testing.T) {
	c := startCluster(t, 2, 4)
	seen := c.startDashboard(t, 1, true)
	require.Eventually(t, func() bool { _, _ = seen(); return c.src.Listener().Active() }, 10*time.Second, time.Millisecond)
	const n = 20000
	c.run(t, "inc", n)
	require.Eventually(t, func() bool { got, _ := seen(); return got >= n }, 30*time.Second, 10*time.Millisecond,
		"the task stream must cover all %d tasks", n)
	got, dropped := seen()
	require.Equal(t, n, got, "no task is counted twice")
	require.Zero(t, dropped)
}

// BenchmarkViewers is the scheduler's throughput of no-op tasks with 0 or 3 dashboards open
// (each reading every frame):
//
//	for i in 1 2 3 4 5; do go test ./dashboard -run '^$' -bench 'Viewers[03]' -benchtime 100000x; done
func BenchmarkViewers0(b *testing.B) { benchViewers(b, 0) }
func BenchmarkViewers3(b *testing.B) { benchViewers(b, 3) }

func benchViewers(b *testing.B, viewers int) {
	c := startCluster(b, 2, 4)
	if viewers > 0 {
		c.startDashboard(b, viewers, false)
		for !c.src.Listener().Active() {
			time.Sleep(time.Millisecond)
		}
	}
	cpu0 := cpuTime()
	b.ResetTimer()
	for done := 0; done < b.N; {
		m := min(50_000, b.N-done)
		for _, f := range c.run(b, fmt.Sprint("z", done), m) {
			f.Release()
		}
		done += m
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
	// CPU time of the whole process (scheduler, dashboard, viewers, fake workers and client)
	// per task: steadier than wall time on a shared machine
	b.ReportMetric(float64(cpuTime()-cpu0)/1e3/float64(b.N), "cpu-µs/task")
}

// cpuTime is this process's user+system CPU time, nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// The scheduler records task runs only while a session is open; the dashboard serves the
// recording of a window as JSON and as a self-contained report page.
func TestRecordingAndReport(t *testing.T) {
	c := startCluster(t, 2, 2)
	ctx := context.Background()
	c.run(t, "before", 100) // nobody records: nothing is kept
	rec, err := c.src.Recorded(ctx, 0, 0)
	require.NoError(t, err)
	require.Empty(t, rec.Tasks)
	require.False(t, rec.Recording)

	start := time.Now().UnixNano()
	require.NoError(t, c.src.Record(ctx, true))
	futs := c.run(t, "inc", 500)
	stop := time.Now().UnixNano()
	require.NoError(t, c.src.Record(ctx, false))
	c.run(t, "after", 100) // the session is closed again

	cfg := dashboard.DefaultConfig()
	cfg.Source = c.src
	d, err := dashboard.New(cfg)
	require.NoError(t, err)
	defer d.Close()
	web := httptest.NewServer(d.Handler())
	defer web.Close()

	resp, err := http.Get(fmt.Sprintf("%s/api/v1/task-stream?start=%d&stop=%d", web.URL, start, stop))
	require.NoError(t, err)
	var got scheduler.Recording
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
	resp.Body.Close()
	require.Len(t, got.Tasks, 500)
	managed := int64(0)
	for _, m := range got.Managed {
		managed += m
	}
	require.EqualValues(t, 700*resultBytes, managed, "every held result (the futures of all three runs)")
	for _, task := range got.Tasks {
		require.Equal(t, "inc", task.Group)
	}
	require.NotEmpty(t, got.Memory, "a memory sample is taken when recording starts")

	resp, err = http.Get(fmt.Sprintf("%s/api/v1/report?start=%d&stop=%d&download=1", web.URL, start, stop))
	require.NoError(t, err)
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Disposition"), "attachment")
	require.Equal(t, 500, strings.Count(string(page), `"group":"inc"`))
	require.NotContains(t, string(page), "/*SHOAL_REPORT_DATA*/")
	require.NotRegexp(t, `(?i)<(script|link)[^>]+(src|href)=`, string(page), "the report loads nothing from elsewhere")
	for _, f := range futs {
		f.Release()
	}

	resp, err = http.Get(web.URL + "/api/v1/report?last=-1")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

// A report page never lets a value end its data element.
func TestRenderReportEscapes(t *testing.T) {
	page, err := dashboard.RenderReport(dashboard.ReportData{Recording: scheduler.Recording{
		Tasks: []scheduler.RecordedTask{{Key: "</script><script>alert(1)</script>", Group: "x"}}}})
	require.NoError(t, err)
	require.NotContains(t, string(page), "</script><script>alert(1)")
	require.Contains(t, string(page), `\u003c/script`)
}
