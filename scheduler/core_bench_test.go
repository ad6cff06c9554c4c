package scheduler

import (
	"math"
	"runtime"
	"strconv"
	"testing"

	"github.com/shoal-dev/shoal/graph"
)

// noopCluster completes every compute instantly, in FIFO order.
type noopCluster struct {
	c       *Core
	acts    []Action
	pending []ActCompute
}

func newNoopCluster(workers, threads int) *noopCluster {
	n := &noopCluster{c: NewCore(DefaultCoreConfig())}
	for w := range workers {
		n.handle(EvWorkerJoined{Worker: WorkerID(w), Name: "w" + strconv.Itoa(w), NThreads: threads, Functions: []string{"f"}})
	}
	return n
}

func (n *noopCluster) handle(ev Event) {
	n.acts = n.c.Handle(ev, n.acts[:0])
	for _, a := range n.acts {
		if ac, ok := a.(*ActCompute); ok {
			n.pending = append(n.pending, *ac)
		}
	}
	n.c.RecycleActions() // every action taken: copied, and drain reads no Deps (recycled too)
	if n.c.DispatchPending() {
		n.handle(EvDispatch{}) // as the server does, once this event's actions are performed
	}
}

func (n *noopCluster) drain() {
	for len(n.pending) > 0 {
		ac := n.pending[0]
		n.pending = n.pending[1:]
		n.handle(EvTaskFinished{Worker: ac.Worker, Key: ac.Key, TaskID: ac.TaskID, NBytes: 8, Encoding: "msgpack", Start: 0, Stop: 1000})
	}
}

func benchTasks(n int, chain bool) ([]graph.Task, []string) {
	tasks := make([]graph.Task, n)
	var wanted []string
	for i := range tasks {
		tasks[i] = graph.Task{Key: "t-" + strconv.Itoa(i), Kind: graph.KindGo, Func: "f"}
		if chain && i > 0 {
			tasks[i].Args = []graph.Arg{graph.Ref(tasks[i-1].Key)}
		}
		if !chain {
			wanted = append(wanted, tasks[i].Key)
		}
	}
	if chain {
		wanted = []string{tasks[n-1].Key}
	}
	return tasks, wanted
}

// runCoreBench pushes b.N tasks through the core end to end: update-graph, compute,
// task-finished, release; it reports CPU and allocation per task, and the live heap per
// task once the graph is in.
func runCoreBench(b *testing.B, chain bool) {
	n := max(b.N, 1)
	tasks, wanted := benchTasks(n, chain)
	cl := newNoopCluster(4, 4)
	var m0, m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	b.ResetTimer()
	cl.handle(EvUpdateGraph{Client: 1, ID: 1, Tasks: tasks, Wanted: wanted})
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&m1)
	b.StartTimer()
	cl.drain()
	cl.handle(EvReleaseKeys{Client: 1, Keys: wanted})
	b.StopTimer()
	runtime.ReadMemStats(&m2)
	if st := cl.c.Stats(); st.TasksAlive != 0 {
		b.Fatalf("%d tasks alive after release", st.TasksAlive)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/task")
	b.ReportMetric(float64(m2.TotalAlloc-m0.TotalAlloc)/float64(n), "alloc-B/task")
	b.ReportMetric(float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc))/float64(n), "live-B/task")
	runtime.KeepAlive(tasks)
}

func BenchmarkCoreNoop(b *testing.B)  { runCoreBench(b, false) }
func BenchmarkCoreChain(b *testing.B) { runCoreBench(b, true) }

// BenchmarkCoreWorkersDie: b.N tasks running on 100 workers (all sent out at once), and every
// worker dies: each task counts a death and waits for a worker again. ns and allocated bytes
// per task of the deaths alone.
func BenchmarkCoreWorkersDie(b *testing.B) {
	n := max(b.N, 1)
	tasks, wanted := benchTasks(n, false)
	cfg := DefaultCoreConfig()
	cfg.SaturationFactor = math.Inf(1)
	c := NewCore(cfg)
	const workers = 100
	var out []Action
	for w := range workers {
		out = c.Handle(EvWorkerJoined{Worker: WorkerID(w), Name: "w" + strconv.Itoa(w), NThreads: 1, Functions: []string{"f"}}, out[:0])
	}
	out = c.Handle(EvUpdateGraph{Client: 1, ID: 1, Tasks: tasks, Wanted: wanted}, out[:0])
	c.RecycleActions()
	if got := c.Counts()[Processing]; got != n {
		b.Fatalf("%d of %d tasks processing", got, n)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	b.ResetTimer()
	for w := range workers {
		out = c.Handle(EvWorkerLeft{Worker: WorkerID(w), Reason: "exit code 137"}, out[:0])
		c.RecycleActions()
	}
	b.StopTimer()
	runtime.ReadMemStats(&m1)
	if got := c.Counts()[Processing]; got != 0 {
		b.Fatalf("%d tasks still processing with every worker dead", got)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/task")
	b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/float64(n), "alloc-B/task")
}
