package dashboard

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server. Start from DefaultConfig.
type Config struct {
	// Source is the scheduler's state. Required.
	Source Source
	// Registry is served at /metrics; the dashboard also registers its own metrics in it
	// (shoal_dashboard_*). Nil: /metrics answers 404.
	Registry *prometheus.Registry
	// Logger receives the dashboard's logs. Nil: slog.Default().
	Logger *slog.Logger
	// MaxUpdatesPerSecond caps the websocket frames sent per second (and so Snapshot calls).
	MaxUpdatesPerSecond int
	// ViewerQueue is how many frames may wait for one slow viewer; beyond it frames are
	// dropped for that viewer and it is told how many.
	ViewerQueue int
	// EventBuffer is the channel size passed to Source.Subscribe.
	EventBuffer int
	// MaxEventsPerFrame bounds the task-stream events carried one by one in a frame (with
	// their keys, for hover and click); the frame's further events are aggregated into spans
	// per worker thread and task group. Cluster events (joins, leaves, errors, retries) are
	// always carried.
	MaxEventsPerFrame int
	// MaxSpansPerFrame bounds the aggregate spans of one frame; an event that needs a new span
	// beyond it is lost and counted (the page shows the loss).
	MaxSpansPerFrame int
	// WriteTimeout bounds one websocket write; a viewer that cannot take a frame within it is
	// disconnected.
	WriteTimeout time.Duration
	// CallTimeout bounds one call into the Source.
	CallTimeout time.Duration
}

// DefaultConfig returns the defaults; set Source (and Registry) before use.
func DefaultConfig() Config {
	return Config{
		MaxUpdatesPerSecond: 10,
		ViewerQueue:         4,
		EventBuffer:         8192,
		MaxEventsPerFrame:   500,
		MaxSpansPerFrame:    4096,
		WriteTimeout:        10 * time.Second,
		CallTimeout:         5 * time.Second,
	}
}

// Validate reports the first bad value.
func (c Config) Validate() error {
	switch {
	case c.Source == nil:
		return fmt.Errorf("dashboard: Config.Source is nil")
	case c.MaxUpdatesPerSecond < 1 || c.MaxUpdatesPerSecond > 1000:
		return fmt.Errorf("dashboard: MaxUpdatesPerSecond %d not in [1, 1000]", c.MaxUpdatesPerSecond)
	case c.ViewerQueue < 1:
		return fmt.Errorf("dashboard: ViewerQueue %d < 1", c.ViewerQueue)
	case c.EventBuffer < 1:
		return fmt.Errorf("dashboard: EventBuffer %d < 1", c.EventBuffer)
	case c.MaxEventsPerFrame < 1:
		return fmt.Errorf("dashboard: MaxEventsPerFrame %d < 1", c.MaxEventsPerFrame)
	case c.MaxSpansPerFrame < 1:
		return fmt.Errorf("dashboard: MaxSpansPerFrame %d < 1", c.MaxSpansPerFrame)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("dashboard: WriteTimeout %v <= 0", c.WriteTimeout)
	case c.CallTimeout <= 0:
		return fmt.Errorf("dashboard: CallTimeout %v <= 0", c.CallTimeout)
	}
	return nil
}
