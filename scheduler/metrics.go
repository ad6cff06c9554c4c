package scheduler

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector returns a Prometheus collector of the scheduler's metrics. Collect asks the driver
// goroutine for one snapshot per scrape; nothing is counted on the hot path beyond plain
// integer increments.
func (s *Server) Collector() prometheus.Collector { return &collector{s: s} }

type collector struct{ s *Server }

var (
	descTasks       = prometheus.NewDesc("shoal_scheduler_tasks", "Tasks the scheduler knows, by state.", []string{"state"}, nil)
	descForgotten   = prometheus.NewDesc("shoal_scheduler_tasks_forgotten_total", "Tasks forgotten since start.", nil, nil)
	descTransitions = prometheus.NewDesc("shoal_scheduler_transitions_total", "Task state transitions since start.", nil, nil)
	descEvents      = prometheus.NewDesc("shoal_scheduler_events_total", "Events handled by the scheduler core.", nil, nil)
	descWorkers     = prometheus.NewDesc("shoal_scheduler_workers", "Registered workers.", nil, nil)
	descJoins       = prometheus.NewDesc("shoal_scheduler_worker_registrations_total",
		"Worker registrations since start; a worker that lost its connection and came back counts again.", nil, nil)
	descThreads = prometheus.NewDesc("shoal_scheduler_worker_threads", "Threads over all workers.", nil, nil)
	descClients = prometheus.NewDesc("shoal_scheduler_clients", "Connected clients.", nil, nil)
	descMemory  = prometheus.NewDesc("shoal_worker_memory_bytes", "Result bytes held in memory, per worker (last heartbeat).", []string{"worker"}, nil)
	descSpilled = prometheus.NewDesc("shoal_worker_spilled_bytes", "Result bytes spilled to disk, per worker.", []string{"worker"}, nil)
	descSent    = prometheus.NewDesc("shoal_worker_bytes_sent_total", "Bytes a worker has sent to peers and clients.", []string{"worker"}, nil)
	descRecv    = prometheus.NewDesc("shoal_worker_bytes_received_total", "Bytes a worker has received from peers.", []string{"worker"}, nil)
	descMsgsIn  = prometheus.NewDesc("shoal_scheduler_messages_received_total", "Messages received by the scheduler.", nil, nil)
	descMsgsOut = prometheus.NewDesc("shoal_scheduler_messages_sent_total", "Messages sent by the scheduler.", nil, nil)
	descBusy    = prometheus.NewDesc("shoal_scheduler_loop_busy_seconds_total", "Time the scheduler's event loop spent working (not waiting).", nil, nil)
	descUptime  = prometheus.NewDesc("shoal_scheduler_uptime_seconds", "Seconds since the scheduler started.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTasks, descForgotten, descTransitions, descEvents, descWorkers, descJoins, descThreads, descClients,
		descMemory, descSpilled, descSent, descRecv, descMsgsIn, descMsgsOut, descBusy, descUptime} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	var counts [NumStates]int
	var st Stats
	var stats serverStats
	var clients int
	var workers []workerMetrics
	ok := s.Query(func(core *Core) {
		counts, st, stats, clients = core.Counts(), core.Stats(), s.stats, len(s.clients)
		for w := range s.workers.all() {
			workers = append(workers, workerMetrics{w.info.Name, w.info.Memory, w.info.Spilled, w.info.BytesSent, w.info.BytesRecv})
		}
	})
	if !ok {
		return
	}
	for i := 0; i < NumStates; i++ {
		if State(i) == Forgotten {
			ch <- prometheus.MustNewConstMetric(descForgotten, prometheus.CounterValue, float64(counts[i]))
			continue
		}
		ch <- prometheus.MustNewConstMetric(descTasks, prometheus.GaugeValue, float64(counts[i]), State(i).String())
	}
	ch <- prometheus.MustNewConstMetric(descTransitions, prometheus.CounterValue, float64(st.Transitions))
	ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(st.Events))
	ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(st.Workers))
	ch <- prometheus.MustNewConstMetric(descJoins, prometheus.CounterValue, float64(stats.registrations))
	ch <- prometheus.MustNewConstMetric(descThreads, prometheus.GaugeValue, float64(st.Threads))
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(clients))
	for _, w := range workers {
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(w.memory), w.name)
		ch <- prometheus.MustNewConstMetric(descSpilled, prometheus.GaugeValue, float64(w.spilled), w.name)
		ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(w.sent), w.name)
		ch <- prometheus.MustNewConstMetric(descRecv, prometheus.CounterValue, float64(w.recv), w.name)
	}
	ch <- prometheus.MustNewConstMetric(descMsgsIn, prometheus.CounterValue, float64(stats.msgsIn))
	ch <- prometheus.MustNewConstMetric(descMsgsOut, prometheus.CounterValue, float64(stats.msgsOut))
	ch <- prometheus.MustNewConstMetric(descBusy, prometheus.CounterValue, time.Duration(stats.busy).Seconds())
	ch <- prometheus.MustNewConstMetric(descUptime, prometheus.GaugeValue, time.Since(s.started).Seconds())
}

type workerMetrics struct {
	name                  string
	memory, spilled, sent int64
	recv                  int64
}
