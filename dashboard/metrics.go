package dashboard

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the dashboard's own Prometheus series (shoal_dashboard_*).
type metrics struct {
	viewers        prometheus.Gauge
	framesSent     prometheus.Counter
	framesDropped  prometheus.Counter
	snapshotErrors prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		viewers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_dashboard_viewers",
			Help: "Browsers connected to the dashboard websocket.",
		}),
		framesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_dashboard_frames_sent_total",
			Help: "Websocket frames queued to viewers.",
		}),
		framesDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_dashboard_frames_dropped_total",
			Help: "Websocket frames dropped because a viewer was too slow.",
		}),
		snapshotErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_dashboard_snapshot_errors_total",
			Help: "Snapshots the Source failed to produce.",
		}),
	}
}

// register adds the metrics to reg; a nil reg is fine (the metrics are then only counted).
func (m *metrics) register(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{m.viewers, m.framesSent, m.framesDropped, m.snapshotErrors} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return fmt.Errorf("dashboard: metrics already registered (one Server per Registry): %w", err)
			}
			return fmt.Errorf("dashboard: registering metrics: %w", err)
		}
	}
	return nil
}
