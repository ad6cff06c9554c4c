package scheduler

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
)

// The statistical profiler's scheduler side. Workers sample the call stacks of the tasks they
// run (Python executors with a sampling thread, Go tasks with pprof labels) only while the
// profiler is on, aggregate them per task group, and ship batches (OpProfileSamples); the
// scheduler folds them into one bounded tree per group. Clients turn it on and read it with the
// profile op; the dashboard reads it with Profile.

const (
	maxProfileNodes  = 200_000 // over every group; samples that need more are counted, not kept
	maxProfileGroups = 1000
	maxStackDepth    = 128
)

// ProfileNode is one frame of a flame graph: Count samples passed through it.
type ProfileNode struct {
	Name     string         `json:"name"`
	Count    int64          `json:"count"`
	Children []*ProfileNode `json:"children,omitempty"`
	index    map[string]*ProfileNode
}

func (n *ProfileNode) child(name string, budget *int) *ProfileNode {
	if c, ok := n.index[name]; ok {
		return c
	}
	if *budget <= 0 {
		return nil
	}
	*budget--
	if n.index == nil {
		n.index = map[string]*ProfileNode{}
	}
	c := &ProfileNode{Name: name}
	n.index[name] = c
	n.Children = append(n.Children, c)
	return c
}

// add records count samples of stack (frames outermost first, joined by ";").
func (n *ProfileNode) add(stack string, count int64, budget *int) bool {
	n.Count += count
	cur := n
	for depth, f := range strings.Split(stack, ";") {
		if depth >= maxStackDepth || f == "" {
			break
		}
		next := cur.child(f, budget)
		if next == nil {
			return false
		}
		next.Count += count
		cur = next
	}
	return true
}

// clone copies the tree with children sorted by count, biggest first.
func (n *ProfileNode) clone() *ProfileNode {
	out := &ProfileNode{Name: n.Name, Count: n.Count}
	for _, c := range n.Children {
		out.Children = append(out.Children, c.clone())
	}
	sort.Slice(out.Children, func(i, j int) bool { return out.Children[i].Count > out.Children[j].Count })
	return out
}

type profiler struct {
	enabled int // sessions asking for it
	groups  map[string]*ProfileNode
	budget  int
	dropped int64 // samples that found no room
}

// Profile is the profiler's state for a client or the dashboard.
type Profile struct {
	Enabled  bool                    `json:"enabled"`
	Interval float64                 `json:"interval"` // seconds between samples
	Dropped  int64                   `json:"dropped"`
	Groups   map[string]*ProfileNode `json:"groups"` // per task group
	Cluster  *ProfileNode            `json:"cluster"`
}

const profileInterval = 0.01

func (p *profiler) ingest(m *wire.Msg) {
	if p.groups == nil {
		p.groups = map[string]*ProfileNode{}
		p.budget = maxProfileNodes
	}
	for _, it := range m.Samples {
		g, ok := p.groups[it.Group]
		if !ok {
			if len(p.groups) >= maxProfileGroups {
				p.dropped += it.Count
				continue
			}
			g = &ProfileNode{Name: it.Group}
			p.groups[it.Group] = g
		}
		if !g.add(it.Stack, it.Count, &p.budget) {
			p.dropped += it.Count
		}
	}
}

func (p *profiler) snapshot(group string) Profile {
	out := Profile{Enabled: p.enabled > 0, Interval: profileInterval, Dropped: p.dropped, Groups: map[string]*ProfileNode{}}
	cluster := &ProfileNode{Name: "cluster"}
	for name, g := range p.groups {
		if group != "" && name != group {
			continue
		}
		c := g.clone()
		out.Groups[name] = c
		cluster.Count += c.Count
		cluster.Children = append(cluster.Children, c)
	}
	sort.Slice(cluster.Children, func(i, j int) bool { return cluster.Children[i].Count > cluster.Children[j].Count })
	out.Cluster = cluster
	return out
}

// setProfiling turns the profiler on (d > 0) or off (d < 0) for one session and tells every
// worker when the cluster-wide state changes.
func (s *Server) setProfiling(d int) {
	p := &s.obs.prof
	was := p.enabled > 0
	p.enabled = min(max(p.enabled+d, 0), maxRecordedWindows)
	if now := p.enabled > 0; now != was {
		for w := range s.workers.all() {
			s.queue(w.conn, s.profileControl())
		}
	}
}

// profileControl is the message that tells a worker the profiler's state (N: 1 on, 0 off).
func (s *Server) profileControl() *wire.Msg {
	var n int64
	if s.obs.prof.enabled > 0 {
		n = 1
	}
	return &wire.Msg{Op: wire.OpProfile, N: n, Timeout: profileInterval}
}

// ProfileOf returns the profile kept so far (one group, or all when group is "").
func (s *Server) ProfileOf(ctx context.Context, group string) (Profile, error) {
	var out Profile
	err := s.QueryContext(ctx, func(*Core) { out = s.obs.prof.snapshot(group) })
	return out, err
}

// Profiling opens (on) or closes a profiling session, as the profile op does.
func (s *Server) Profiling(ctx context.Context, on bool) error {
	d := -1
	if on {
		d = 1
	}
	return s.QueryContext(ctx, func(*Core) { s.setProfiling(d) })
}

// onProfile serves the profile op: N > 0 turns the profiler on for this session, N < 0 off,
// N == 0 only reads; Key names a group ("" all); the profile is returned as JSON in Payload.
func (s *Server) onProfile(m *wire.Msg, reply func(*wire.Msg)) {
	switch {
	case m.N > 0:
		s.setProfiling(1)
	case m.N < 0:
		s.setProfiling(-1)
	}
	b, err := json.Marshal(s.obs.prof.snapshot(m.Key))
	if err != nil {
		reply(&wire.Msg{Op: wire.OpError, Code: wire.CodeProtocol, Message: "profile: " + err.Error()})
		return
	}
	reply(&wire.Msg{Op: wire.OpOK, Payload: b, Start: time.Now().UnixNano()})
}

// onProfileSamples folds a worker's batch into the profile and hands it to the listener.
func (s *Server) onProfileSamples(w *workerConn, m *wire.Msg) {
	s.obs.prof.ingest(m)
}

// profileJoined tells a worker that joins while the profiler is on to sample.
func (s *Server) profileJoined(w *workerConn) {
	if s.obs.prof.enabled > 0 {
		s.queue(w.conn, s.profileControl())
	}
}
