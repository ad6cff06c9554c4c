package worker

import (
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is a point-in-time snapshot of a worker's counters and gauges.
type Metrics struct {
	TasksExecuted   int64 // tasks finished successfully
	TasksErred      int64 // tasks that returned an error or panicked
	BytesSent       int64 // payload bytes served on the data port
	BytesReceived   int64 // payload bytes fetched from peers or put by clients
	TransfersIn     int64 // successful get_data requests to peers
	TransfersOut    int64 // get_data requests served with at least one value
	ShmTransfersIn  int64 // values taken from a peer on this machine as a segment descriptor
	ShmTransfersOut int64 // values handed to a peer on this machine as a segment descriptor
	Prefilled       int64 // fetched frames a run found already copied into its executor's window (prefill.go)
	Kept            int64 // results their Python executor kept in its memory (resident.go)
	KeptUsed        int64 // dependencies a run took from the executor that kept them
	KeptExported    int64 // kept results copied out of their executor (to leave it)
	FetchFailures   int64 // dependencies no holder could supply
	Fetching        int   // dependencies being fetched or queued for fetching
	Memory          int64 // result bytes held in memory, segments included
	SegmentBytes    int64 // bytes of the shared-memory segments (memfds) the store holds
	Spilled         int64 // result bytes spilled to disk
	MemoryLimit     int64
	ProcessMemory   int64 // bytes resident in the worker process and its executors, plus SegmentBytes; -1: unknown
	Keys            int   // results held
	Executing       int   // tasks running now
	Ready           int   // tasks waiting for a thread
	Waiting         int   // tasks waiting for dependencies
	Paused          bool
	PythonRunning   int // live Python executor processes
	ExecutorDeaths  int64
}

// Metrics returns a snapshot.
func (w *Worker) Metrics() Metrics {
	st := w.store.Stats()
	m := Metrics{
		TasksExecuted: w.stats.executed.Load(), TasksErred: w.stats.erred.Load(),
		BytesSent: w.stats.bytesSent.Load(), BytesReceived: w.stats.bytesRecv.Load(),
		TransfersIn: w.stats.transfersIn.Load(), TransfersOut: w.stats.transferOut.Load(),
		ShmTransfersIn: w.stats.shmIn.Load(), ShmTransfersOut: w.stats.shmOut.Load(), SegmentBytes: st.Segments,
		FetchFailures: w.stats.fetchFailures.Load(), Prefilled: w.py.prefillsTaken.Load(),
		Kept: w.py.kept.Load(), KeptUsed: w.py.keptUsed.Load(), KeptExported: w.py.keptExported.Load(),
		Memory: st.Memory, Spilled: st.Spilled, MemoryLimit: w.memLimit, Keys: st.Keys,
		ExecutorDeaths: w.py.deaths.Load(), ProcessMemory: w.ProcessMemory(),
	}
	w.mu.Lock()
	m.Executing = w.mu.running
	m.Ready = len(w.mu.ready)
	m.Waiting = len(w.mu.tasks) - m.Ready - m.Executing
	m.Fetching = len(w.mu.fetches)
	m.Paused = w.pausedLocked()
	w.mu.Unlock()
	m.PythonRunning = w.py.live()
	return m
}

// Collector returns a Prometheus collector reading Metrics on every scrape.
func (w *Worker) Collector() prometheus.Collector { return &collector{w: w} }

type collector struct{ w *Worker }

type metricDesc struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*Metrics) float64
}

var metricDescs = func() []metricDesc {
	c, g := prometheus.CounterValue, prometheus.GaugeValue
	d := func(name, help string, typ prometheus.ValueType, f func(*Metrics) float64) metricDesc {
		return metricDesc{prometheus.NewDesc("shoal_worker_"+name, help, nil, nil), typ, f}
	}
	return []metricDesc{
		d("tasks_executed_total", "Tasks finished successfully.", c, func(m *Metrics) float64 { return float64(m.TasksExecuted) }),
		d("tasks_erred_total", "Tasks that returned an error or panicked.", c, func(m *Metrics) float64 { return float64(m.TasksErred) }),
		d("bytes_sent_total", "Payload bytes served on the data port.", c, func(m *Metrics) float64 { return float64(m.BytesSent) }),
		d("bytes_received_total", "Payload bytes fetched from peers or put by clients.", c, func(m *Metrics) float64 { return float64(m.BytesReceived) }),
		d("transfers_in_total", "Successful get_data requests to peers.", c, func(m *Metrics) float64 { return float64(m.TransfersIn) }),
		d("transfers_out_total", "get_data requests served with data.", c, func(m *Metrics) float64 { return float64(m.TransfersOut) }),
		d("shm_transfers_in_total", "Values taken from a peer on this machine as a shared-memory segment (no copy).", c, func(m *Metrics) float64 { return float64(m.ShmTransfersIn) }),
		d("shm_transfers_out_total", "Values handed to a peer on this machine as a shared-memory segment.", c, func(m *Metrics) float64 { return float64(m.ShmTransfersOut) }),
		d("kept_results_total", "Large Python results their executor kept in its memory instead of writing them to shared memory.", c, func(m *Metrics) float64 { return float64(m.Kept) }),
		d("kept_used_total", "Dependencies a Python task took, without a copy, from the executor that kept them.", c, func(m *Metrics) float64 { return float64(m.KeptUsed) }),
		d("kept_exported_total", "Kept results copied out of their executor into shared memory, to leave it (another executor, a peer, a client, spilling).", c, func(m *Metrics) float64 { return float64(m.KeptExported) }),
		d("prefilled_frames_total", "Frames fetched from peers for Python tasks that were copied into the executor's shared memory as they arrived, and taken from there by the task's run.", c, func(m *Metrics) float64 { return float64(m.Prefilled) }),
		d("fetch_failures_total", "Dependencies no holder could supply.", c, func(m *Metrics) float64 { return float64(m.FetchFailures) }),
		d("executor_deaths_total", "Python executors that died.", c, func(m *Metrics) float64 { return float64(m.ExecutorDeaths) }),
		d("memory_bytes", "Result bytes held in memory.", g, func(m *Metrics) float64 { return float64(m.Memory) }),
		d("shm_segment_bytes", "Bytes of the shared-memory segments holding results (part of memory_bytes).", g, func(m *Metrics) float64 { return float64(m.SegmentBytes) }),
		d("spilled_bytes", "Result bytes spilled to disk.", g, func(m *Metrics) float64 { return float64(m.Spilled) }),
		d("process_memory_bytes", "Memory resident in the worker process and its Python executors, plus its shared-memory segments (-1: unknown).", g, func(m *Metrics) float64 { return float64(m.ProcessMemory) }),
		d("memory_limit_bytes", "Memory limit of the whole worker: its process and its Python executors.", g, func(m *Metrics) float64 { return float64(m.MemoryLimit) }),
		d("keys", "Results held.", g, func(m *Metrics) float64 { return float64(m.Keys) }),
		d("executing", "Tasks running now.", g, func(m *Metrics) float64 { return float64(m.Executing) }),
		d("ready", "Tasks waiting for a thread.", g, func(m *Metrics) float64 { return float64(m.Ready) }),
		d("waiting", "Tasks waiting for dependencies.", g, func(m *Metrics) float64 { return float64(m.Waiting) }),
		d("fetching", "Dependencies being fetched or queued.", g, func(m *Metrics) float64 { return float64(m.Fetching) }),
		d("python_executors", "Live Python executor processes.", g, func(m *Metrics) float64 { return float64(m.PythonRunning) }),
		d("paused", "1 when the worker is paused for memory.", g, func(m *Metrics) float64 {
			if m.Paused {
				return 1
			}
			return 0
		}),
	}
}()

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range metricDescs {
		ch <- d.desc
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.w.Metrics()
	for _, d := range metricDescs {
		ch <- prometheus.MustNewConstMetric(d.desc, d.typ, d.value(&m))
	}
}

// cpuMeter measures this process's CPU use between calls, in percent of one core.
type cpuMeter struct {
	last    time.Time
	lastCPU time.Duration
}

func newCPUMeter() *cpuMeter { return &cpuMeter{last: time.Now(), lastCPU: processCPU()} }

func (c *cpuMeter) percent() float64 {
	now, cpu := time.Now(), processCPU()
	wall := now.Sub(c.last)
	used := cpu - c.lastCPU
	c.last, c.lastCPU = now, cpu
	if wall <= 0 {
		return 0
	}
	return 100 * used.Seconds() / wall.Seconds()
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
