package member

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testTimeout bounds how long a test waits for gossip to converge; it is a
// deadline for progress, not an assertion about speed.
const testTimeout = 30 * time.Second

func newMember(t *testing.T, name string, meta Meta, token string) *Member {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.Meta = meta
	cfg.Token = token
	cfg.Logger = slog.New(slog.DiscardHandler)
	m, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { m.Shutdown() })
	return m
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return c
}

func named(name string) func(Node) bool {
	return func(n Node) bool { return n.Name == name }
}

// waitEvent reads m's events until one of type typ about name arrives.
func waitEvent(t *testing.T, m *Member, typ EventType, name string) Event {
	t.Helper()
	c := ctx(t)
	for {
		select {
		case ev, ok := <-m.Events():
			require.True(t, ok, "events closed")
			if ev.Type == typ && ev.Node.Name == name {
				return ev
			}
		case <-c.Done():
			t.Fatalf("no %v event for %s", typ, name)
		}
	}
}

func TestJoinThroughAnotherWorker(t *testing.T) {
	sched := Meta{Role: RoleScheduler, Control: "127.0.0.1:8786", HTTP: "http://127.0.0.1:8787", Version: "test"}
	a := newMember(t, "a", sched, "")
	b := newMember(t, "b", Meta{Role: RoleWorker, Data: "127.0.0.1:9001", NThreads: 4}, "")
	c := newMember(t, "c", Meta{Role: RoleWorker, Data: "127.0.0.1:9002", Resources: map[string]float64{"GPU": 1}}, "")
	require.NotEqual(t, a.Addr(), b.Addr())
	require.True(t, strings.HasPrefix(a.Addr(), "127.0.0.1:"))

	n, err := b.Join([]string{a.Addr()})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = c.Join([]string{b.Addr()}) // through the worker, not the scheduler
	require.NoError(t, err)
	require.Equal(t, 1, n)

	got, err := c.WaitFor(ctx(t), IsScheduler)
	require.NoError(t, err)
	require.Equal(t, "a", got.Name)
	require.Equal(t, a.Addr(), got.Addr)
	require.Equal(t, Meta{Role: RoleScheduler, Name: "a", Control: "127.0.0.1:8786", HTTP: "http://127.0.0.1:8787", Version: "test"}, got.Meta)

	gpu, err := a.WaitFor(ctx(t), named("c"))
	require.NoError(t, err)
	require.Equal(t, map[string]float64{"GPU": 1}, gpu.Meta.Resources)
	require.Equal(t, StateAlive, gpu.State)

	ev := waitEvent(t, a, EventJoin, "c")
	require.Equal(t, "127.0.0.1:9002", ev.Node.Meta.Data)
	require.Zero(t, a.Dropped())

	// A meta update reaches the others.
	require.NoError(t, b.UpdateMeta(Meta{Role: RoleWorker, Data: "127.0.0.1:9001", NThreads: 8}))
	ev = waitEvent(t, a, EventUpdate, "b")
	require.Equal(t, 8, ev.Node.Meta.NThreads)

	// A graceful leave is a Leave, not a Dead.
	require.NoError(t, c.Leave(time.Second))
	ev = waitEvent(t, a, EventLeave, "c")
	require.Equal(t, StateLeft, ev.Node.State)
}

func TestDeadMemberReported(t *testing.T) {
	a := newMember(t, "a", Meta{Role: RoleScheduler}, "")
	b := newMember(t, "b", Meta{Role: RoleWorker}, "")
	_, err := b.Join([]string{a.Addr()})
	require.NoError(t, err)
	waitEvent(t, a, EventJoin, "b")

	require.NoError(t, b.Shutdown()) // no Leave: a crash
	ev := waitEvent(t, a, EventDead, "b")
	require.Equal(t, StateDead, ev.Node.State)
	for _, n := range a.Members() {
		require.NotEqual(t, "b", n.Name, "dead member still listed")
	}
}

func TestWrongTokenIsolated(t *testing.T) {
	a := newMember(t, "a", Meta{Role: RoleScheduler}, "secret")
	b := newMember(t, "b", Meta{Role: RoleWorker}, "other")
	c := newMember(t, "c", Meta{Role: RoleWorker}, "")
	_, err := b.Join([]string{a.Addr()})
	require.Error(t, err)
	_, err = c.Join([]string{a.Addr()})
	require.Error(t, err)
	require.Len(t, a.Members(), 1)
	require.Len(t, b.Members(), 1)

	d := newMember(t, "d", Meta{Role: RoleWorker}, "secret")
	_, err = d.Join([]string{a.Addr()})
	require.NoError(t, err)
	_, err = d.WaitFor(ctx(t), IsScheduler)
	require.NoError(t, err)
}

func TestWaitForContext(t *testing.T) {
	a := newMember(t, "a", Meta{Role: RoleWorker}, "")
	c, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := a.WaitFor(c, IsScheduler)
	require.ErrorIs(t, err, context.Canceled)
}

func TestMetaTooLarge(t *testing.T) {
	meta := Meta{Role: RoleWorker, Resources: map[string]float64{}}
	for i := range 60 {
		meta.Resources[strings.Repeat("r", 8)+string(rune('A'+i))] = 1
	}
	_, err := meta.Encode()
	require.ErrorIs(t, err, ErrMetaTooLarge)

	cfg := DefaultConfig()
	cfg.Name = "big"
	cfg.Meta = meta
	_, err = New(cfg)
	require.ErrorIs(t, err, ErrMetaTooLarge)

	m := newMember(t, "small", Meta{Role: RoleWorker}, "")
	require.ErrorIs(t, m.UpdateMeta(meta), ErrMetaTooLarge)
}

func TestValidate(t *testing.T) {
	cfg := DefaultConfig()
	err := cfg.Validate()
	require.ErrorContains(t, err, "Name")
	require.ErrorContains(t, err, "role")

	cfg.Name, cfg.Meta.Role = "x", RoleWorker
	require.NoError(t, cfg.Validate())
	cfg.ProbeTimeout = 2 * cfg.ProbeInterval
	require.ErrorContains(t, cfg.Validate(), "ProbeTimeout 1s")
	cfg = DefaultConfig()
	cfg.Name, cfg.Meta.Role, cfg.BindAddr = "x", "boss", "localhost"
	err = cfg.Validate()
	require.ErrorContains(t, err, `"localhost"`)
	require.ErrorContains(t, err, `"boss"`)
}

func TestEventsDropWhenFull(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Name, cfg.Meta.Role, cfg.EventBuffer = "a", RoleScheduler, 1
	a, err := New(cfg) // its own join fills the buffer
	require.NoError(t, err)
	defer a.Shutdown()
	b := newMember(t, "b", Meta{Role: RoleWorker}, "")
	_, err = b.Join([]string{a.Addr()})
	require.NoError(t, err)
	_, err = a.WaitFor(ctx(t), named("b")) // WaitFor works without reading Events
	require.NoError(t, err)
	require.NotZero(t, a.Dropped())

	require.NoError(t, a.Shutdown())
	for range a.Events() { // closed by Shutdown
	}
	require.NoError(t, a.Shutdown(), "idempotent")
}

func TestLogAdapter(t *testing.T) {
	var buf strings.Builder
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	newLogAdapter(logger, "a").Printf("[WARN] memberlist: something odd")
	require.Contains(t, buf.String(), `msg="something odd"`)
	require.Contains(t, buf.String(), "level_memberlist=WARN")
	require.Contains(t, buf.String(), "level=DEBUG")
	require.False(t, errors.Is(nil, ErrMetaTooLarge))
}

// FuzzDecodeMeta: gossip metadata from any member decodes or is refused, never panics.
func FuzzDecodeMeta(f *testing.F) {
	b, _ := Meta{Role: RoleWorker, Name: "w", Data: "127.0.0.1:1", NThreads: 2, Resources: map[string]float64{"GPU": 1}}.Encode()
	f.Add(b)
	f.Add([]byte(`{"r":"worker","x":{"a":1e999}}`))
	f.Add([]byte(`[[[[[[[[[[[[[[[[[[[[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		// what was accepted survives a round trip (or is too large to re-advertise)
		if enc, err := m.Encode(); err == nil {
			back, err := DecodeMeta(enc)
			again, _ := back.Encode()
			if err != nil || !bytes.Equal(enc, again) {
				t.Fatalf("round trip of %q: %s → %s (%v)", b, enc, again, err)
			}
		}
	})
}

func TestWildcardBindAdvertises(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Name, cfg.Meta.Role, cfg.BindAddr = "w", RoleWorker, "0.0.0.0"
	require.ErrorContains(t, cfg.Validate(), `BindAddr "0.0.0.0" listens on every interface: set AdvertiseAddr`)
	cfg.AdvertiseAddr = "::"
	require.ErrorContains(t, cfg.Validate(), `AdvertiseAddr "::" is a wildcard`)

	// bound to every interface on a free port, advertised at loopback with that port
	cfg.AdvertiseAddr = "127.0.0.1"
	a, err := New(cfg)
	require.NoError(t, err)
	defer a.Shutdown()
	host, port, err := net.SplitHostPort(a.Addr())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	require.NotEqual(t, "0", port)
	b := newMember(t, "b", Meta{Role: RoleScheduler}, "")
	_, err = b.Join([]string{a.Addr()})
	require.NoError(t, err)
	n, err := b.WaitFor(ctx(t), named("w"))
	require.NoError(t, err)
	require.Equal(t, a.Addr(), n.Addr, "the others know it by its advertised address")
}
