// Package dashboard is Shoal's live web dashboard: a web app embedded in the binary, a
// websocket that streams batched updates to it, a JSON API and the Prometheus /metrics
// endpoint, all served by the scheduler's HTTP port.
//
// The dashboard reads the scheduler through the Source interface (source.go) and nothing else.
// SchedulerSource (scheduler.go) implements it over a *scheduler.Server: the scheduler
// publishes its own typed events through a scheduler.EventListener, which SchedulerSource turns
// into the page's Events, and answers status queries in its own types; the scheduler does not
// import this package. Feed and EventLog are the pieces it is built from: Feed is a fan-out for
// live events whose Publish never blocks (one atomic load when nobody is subscribed), and
// EventLog keeps the recent cluster events. A Source that also implements Recorder
// (report.go) gets the performance report, the task-stream recording and the profile
// endpoints.
//
// Use:
//
//	src := dashboard.NewSchedulerSource(srv)
//	srv.SetListener(src.Listener()) // before srv.Serve
//	cfg := dashboard.DefaultConfig()
//	cfg.Source = src          // implements dashboard.Source
//	cfg.Registry = registry   // served at /metrics
//	cfg.Logger = logger
//	d, err := dashboard.New(cfg)
//	...
//	mux.Handle("/", d.Handler()) // or http.StripPrefix("/dash", d.Handler()) under a prefix
//	...
//	d.Close() // before the Source goes away
//
// Cost model: with no browser connected the dashboard holds no subscription and no timer and
// calls nothing on the Source. While at least one browser is connected one goroutine (the hub)
// subscribes to the Source's events and calls Snapshot at most Config.MaxUpdatesPerSecond
// times a second; it encodes each frame once and offers it to every viewer without blocking.
// A viewer whose bounded queue is full loses the frame, is told the count with its next frame,
// and is resynchronised with a full frame. Task, GroupGraph and Events are called only when a
// page asks for them. See docs/dashboard.md.
package dashboard
