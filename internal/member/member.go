package member

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// State is a member's liveness as gossip knows it.
type State int

// States, in memberlist's order.
const (
	StateAlive State = iota
	StateSuspect
	StateDead
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Node is one member as seen by gossip.
type Node struct {
	Name  string
	Addr  string // gossip address, host:port
	Meta  Meta   // zero if the node's metadata could not be decoded
	State State
}

// EventType says what happened to a member.
type EventType int

// Event types.
const (
	// EventJoin: a member became known (or came back).
	EventJoin EventType = iota + 1
	// EventUpdate: a member changed its Meta.
	EventUpdate
	// EventLeave: a member left gracefully (Member.Leave).
	EventLeave
	// EventDead: a member stopped answering and was declared dead.
	EventDead
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventDead:
		return "dead"
	}
	return "EventType(" + strconv.Itoa(int(t)) + ")"
}

// Event is a membership change.
type Event struct {
	Type EventType
	Node Node
}

// IsScheduler is a WaitFor predicate matching a scheduler that is not
// leaving.
func IsScheduler(n Node) bool { return n.Meta.Role == RoleScheduler && !n.Meta.Leaving }

// Member is this process's membership in the cluster. Its methods are safe
// for concurrent use.
type Member struct {
	cfg     Config
	list    *memberlist.Memberlist
	addr    string
	events  chan Event
	dropped atomic.Uint64

	mu struct {
		sync.Mutex
		meta    []byte          // encoded local Meta, served to memberlist
		nodes   map[string]Node // live members by name
		changed chan struct{}   // closed and replaced on every change
		closed  bool            // events channel closed
	}
}

// New validates cfg, starts gossip and, when cfg.Seeds is non-empty,
// joins them. The caller must Shutdown the member.
func New(cfg Config) (*Member, error) {
	if cfg.Meta.Name == "" {
		cfg.Meta.Name = cfg.Name
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	meta, err := cfg.Meta.Encode()
	if err != nil {
		return nil, err
	}
	m := &Member{cfg: cfg, events: make(chan Event, cfg.EventBuffer)}
	m.mu.meta = meta
	m.mu.changed = make(chan struct{})
	m.mu.nodes = make(map[string]Node)

	list, err := memberlist.Create(m.memberlistConfig())
	if err != nil {
		return nil, fmt.Errorf("member: start gossip on %s: %w", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	m.list = list
	m.addr = list.LocalNode().Address() // before any peer can touch it
	if len(cfg.Seeds) > 0 {
		if _, err := m.Join(cfg.Seeds); err != nil {
			m.Shutdown()
			return nil, err
		}
	}
	return m, nil
}

func (m *Member) memberlistConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = m.cfg.Name
	c.BindAddr = m.cfg.BindAddr
	if c.BindAddr == "" {
		c.BindAddr = "127.0.0.1"
	}
	c.BindPort = m.cfg.BindPort
	c.AdvertiseAddr = m.cfg.AdvertiseAddr
	c.AdvertisePort = m.cfg.BindPort
	c.ProbeInterval = m.cfg.ProbeInterval
	c.ProbeTimeout = m.cfg.ProbeTimeout
	c.GossipInterval = m.cfg.GossipInterval
	c.SuspicionMult = m.cfg.SuspicionMult
	c.PushPullInterval = m.cfg.PushPullInterval
	c.TCPTimeout = m.cfg.TCPTimeout
	c.DeadNodeReclaimTime = m.cfg.DeadNodeReclaimTime
	c.Delegate = (*delegate)(m)
	c.Events = (*eventDelegate)(m)
	c.Logger = newLogAdapter(m.cfg.Logger, m.cfg.Name)
	if m.cfg.Token != "" {
		key := sha256.Sum256([]byte(m.cfg.Token))
		c.SecretKey = key[:]
	}
	return c
}

// Join contacts the seeds (host:port gossip addresses of any members) and
// returns how many were reached. It fails only if none was.
func (m *Member) Join(seeds []string) (int, error) {
	n, err := m.list.Join(seeds)
	if err != nil {
		return n, fmt.Errorf("member: join %v: %w", seeds, err)
	}
	return n, nil
}

// Addr returns the gossip address other members join, host:port, with the
// port actually bound.
func (m *Member) Addr() string { return m.addr }

// Name returns the member's name.
func (m *Member) Name() string { return m.cfg.Name }

// Members returns the live members, this one included, sorted by name.
// Their State is StateAlive: memberlist does not expose which of them are
// suspect.
//
// The list is kept from memberlist's callbacks (which run under its lock)
// rather than memberlist.Members, whose nodes memberlist keeps mutating
// after returning them.
func (m *Member) Members() []Node {
	m.mu.Lock()
	nodes := make([]Node, 0, len(m.mu.nodes))
	for _, n := range m.mu.nodes {
		nodes = append(nodes, n)
	}
	m.mu.Unlock()
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return nodes
}

// Events returns the membership change feed. It is closed by Shutdown.
func (m *Member) Events() <-chan Event { return m.events }

// Dropped returns how many events were dropped because the Events channel
// was full.
func (m *Member) Dropped() uint64 { return m.dropped.Load() }

// WaitFor blocks until a live member satisfying pred is known, and
// returns it, or until ctx is done. It does not consume Events.
func (m *Member) WaitFor(ctx context.Context, pred func(Node) bool) (Node, error) {
	for {
		changed := m.changedCh()
		for _, n := range m.Members() {
			if pred(n) {
				return n, nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Node{}, fmt.Errorf("member: waiting for a member: %w", ctx.Err())
		}
	}
}

// UpdateMeta replaces the advertised Meta and gossips it, waiting up to
// the TCP timeout for the broadcast to go out.
func (m *Member) UpdateMeta(meta Meta) error {
	if meta.Name == "" {
		meta.Name = m.cfg.Name
	}
	if err := meta.validate(); err != nil {
		return err
	}
	b, err := meta.Encode()
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.mu.meta = b
	m.mu.Unlock()
	if err := m.list.UpdateNode(m.cfg.TCPTimeout); err != nil {
		return fmt.Errorf("member: update meta: %w", err)
	}
	return nil
}

// Leave announces a graceful departure and waits up to timeout for it to
// be gossiped. Call Shutdown afterwards.
//
// memberlist reports a leave and a death alike to the others, so Leave
// first gossips its Meta with Leaving set (taking up to half of timeout);
// the others then report EventLeave for it instead of EventDead.
func (m *Member) Leave(timeout time.Duration) error {
	m.mu.Lock()
	meta, err := DecodeMeta(m.mu.meta)
	if err == nil {
		meta.Leaving = true
		var b []byte
		if b, err = meta.Encode(); err == nil {
			m.mu.meta = b
		}
	}
	m.mu.Unlock()
	if err == nil {
		// Best effort: without it the others report EventDead.
		_ = m.list.UpdateNode(timeout / 2)
	}
	if err := m.list.Leave(timeout); err != nil {
		return fmt.Errorf("member: leave: %w", err)
	}
	return nil
}

// Shutdown stops gossip without announcing it (others will detect the
// member as dead unless Leave was called first) and closes Events. It is
// idempotent.
func (m *Member) Shutdown() error {
	err := m.list.Shutdown()
	m.mu.Lock()
	if !m.mu.closed {
		m.mu.closed = true
		close(m.events)
	}
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("member: shutdown: %w", err)
	}
	return nil
}

func (m *Member) changedCh() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.changed
}

// publish records ev in the member table, delivers it without blocking
// and wakes WaitFor callers.
func (m *Member) publish(ev Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch ev.Type {
	case EventJoin, EventUpdate:
		m.mu.nodes[ev.Node.Name] = ev.Node
	default:
		delete(m.mu.nodes, ev.Node.Name)
	}
	close(m.mu.changed)
	m.mu.changed = make(chan struct{})
	if m.mu.closed {
		return
	}
	select {
	case m.events <- ev:
	default:
		m.dropped.Add(1)
	}
}

// toNode converts a memberlist node. memberlist (v0.7) does not fill in
// Node.State, so the caller supplies the state it knows from context.
func toNode(n *memberlist.Node, state State) Node {
	meta, _ := DecodeMeta(n.Meta)
	return Node{
		Name:  n.Name,
		Addr:  n.Address(),
		Meta:  meta,
		State: state,
	}
}

// delegate serves the local metadata to memberlist; the member carries no
// user messages or state of its own.
type delegate Member

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.mu.meta) > limit {
		return nil // cannot happen: Encode enforces MaxMetaSize
	}
	return d.mu.meta
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate turns memberlist's callbacks into Events.
type eventDelegate Member

func (e *eventDelegate) NotifyJoin(n *memberlist.Node) {
	(*Member)(e).publish(Event{Type: EventJoin, Node: toNode(n, StateAlive)})
}

func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) {
	(*Member)(e).publish(Event{Type: EventUpdate, Node: toNode(n, StateAlive)})
}

func (e *eventDelegate) NotifyLeave(n *memberlist.Node) {
	node := toNode(n, StateDead)
	typ := EventDead
	if node.Meta.Leaving {
		typ, node.State = EventLeave, StateLeft
	}
	(*Member)(e).publish(Event{Type: typ, Node: node})
}
