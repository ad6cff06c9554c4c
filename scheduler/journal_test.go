package scheduler

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// journalServer serves a scheduler journaling into dir on a free loopback port.
func journalServer(t *testing.T, dir string) (*Server, func()) {
	t.Helper()
	cfg := DefaultServerConfig()
	cfg.Journal, cfg.RecoveryWait = dir, 50*time.Millisecond
	return serveConfig(t, cfg)
}

// serveConfig serves a scheduler with cfg on a free loopback port; the func stops it.
func serveConfig(t *testing.T, cfg ServerConfig) (*Server, func()) {
	t.Helper()
	cfg.Port = 0
	s, err := NewServer(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	return s, func() { cancel(); <-done }
}

// dialClient connects as a client and returns the connection and the id it was welcomed with.
func dialClient(t *testing.T, s *Server) (*wire.Conn, int64) {
	t.Helper()
	c, err := wire.Dial(context.Background(), s.Addr(), wire.DialOptions{Role: wire.RoleClient})
	require.NoError(t, err)
	t.Cleanup(func() { c.Abort() })
	m, _, err := c.Recv()
	require.NoError(t, err)
	require.Equal(t, wire.OpWelcome, m.Op)
	return c, m.Client
}

// recvOp reads messages until one with op arrives.
func recvOp(t *testing.T, c *wire.Conn, op string) *wire.Msg {
	t.Helper()
	for {
		m, _, err := c.Recv()
		require.NoError(t, err)
		if m.Op == op {
			return m
		}
		require.NotEqual(t, wire.OpError, m.Op, "error: %s %s", m.Code, m.Message)
	}
}

// waitCompacted waits until the journal's compaction (begun on the driver) is done.
func waitCompacted(t *testing.T, s *Server) {
	t.Helper()
	require.Eventually(t, func() bool {
		var busy bool
		s.Query(func(*Core) { busy = s.journal.compacting })
		return !busy
	}, 10*time.Second, 5*time.Millisecond, "the compaction did not finish")
}

func sharedValue(op, name, data string) *wire.Msg {
	return &wire.Msg{Op: op, Name: name, Items: []wire.Item{{Encoding: wire.EncMsgpack}}, Payload: []byte(data)}
}

// query runs f on the driver and waits; f's failed assertions are reported here (a t.FailNow
// on the driver goroutine would stop the driver instead of the test).
func query(t *testing.T, s *Server, f func(t require.TestingT)) {
	t.Helper()
	rec := &assertLog{}
	require.True(t, s.Query(func(*Core) { f(rec) }))
	for _, msg := range rec.errs {
		t.Error(msg)
	}
	if len(rec.errs) > 0 {
		t.FailNow()
	}
}

type assertLog struct{ errs []string }

func (r *assertLog) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *assertLog) FailNow() {}

// A scheduler started again on a journal knows the graphs, wants and shared state it was
// given, gives the client its id back on resume, and drops a torn tail. A compaction keeps
// the same state in fewer records.
func TestJournalReplay(t *testing.T) {
	dir := t.TempDir()
	s, stop := journalServer(t, dir)
	c, id := dialClient(t, s)
	graphMsg := &wire.Msg{Op: wire.OpUpdateGraph, ID: 1, Wanted: []string{"b", "c"}, Tasks: []graph.Task{
		{Key: "a", Kind: graph.KindGo, Func: "inc"},
		{Key: "b", Kind: graph.KindGo, Func: "inc", Deps: []string{"a"}, Args: []graph.Arg{{Ref: "a"}}},
		{Key: "c", Kind: graph.KindGo, Func: "inc"},
		{Key: "gone", Kind: graph.KindGo, Func: "inc"},
	}}
	graphMsg.Wanted = append(graphMsg.Wanted, "gone")
	require.NoError(t, c.Send(graphMsg))
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpReleaseKeys, Keys: []string{"gone"}}))
	for i, m := range []*wire.Msg{sharedValue(wire.OpVariableSet, "v", "x1"), sharedValue(wire.OpQueuePut, "q", "first"),
		sharedValue(wire.OpQueuePut, "q", "second"), {Op: wire.OpQueueGet, Name: "q"}, {Op: wire.OpEventSet, Name: "e"}} {
		m.ID = uint64(10 + i)
		require.NoError(t, c.Send(m))
		require.Equal(t, m.ID, recvOp(t, c, wire.OpOK).ID)
	}
	stop()

	check := func(s *Server) {
		t.Helper()
		query(t, s, func(t require.TestingT) {
			require.Equal(t, 3, s.core.NTasks(), "a, b, c (gone was released)")
			wanted := s.core.WantedBy(ClientID(id))
			slices.Sort(wanted)
			require.Equal(t, []string{"b", "c"}, wanted)
			require.Contains(t, s.orphans, ClientID(id))
			st := s.sharedState()
			require.Equal(t, "x1", string(st.vars["v"].val.data))
			require.Equal(t, 1, st.queues["q"].len())
			require.Equal(t, "second", string(st.queues["q"].items[st.queues["q"].head].data))
			require.True(t, st.events["e"].set)
		})
	}

	// a torn record at the end (the process died while writing it) is cut off
	path := filepath.Join(dir, journalFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write([]byte{0xff, 0xff, 0x00, 0x00, 1, 2, 3})
	require.NoError(t, err)
	require.NoError(t, f.Close())

	s, stop = journalServer(t, dir)
	check(s)
	st, err := os.Stat(path)
	require.NoError(t, err)
	query(t, s, func(t require.TestingT) { require.Equal(t, st.Size(), s.journal.size, "the torn tail was cut") })

	// the client comes back: same id, and the finished state of what it holds is sent
	c, newID := dialClient(t, s)
	require.NotEqual(t, id, newID, "a new connection does not reuse a journaled id")
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpResume, ID: 1, Client: id, Keys: []string{"c", "unknown"}}))
	require.Equal(t, id, recvOp(t, c, wire.OpResumed).Client)
	ks := recvOp(t, c, wire.OpKeyState)
	require.Equal(t, "unknown", ks.Key)
	require.Equal(t, "lost", ks.State)
	query(t, s, func(t require.TestingT) {
		require.Equal(t, []string{"c"}, s.core.WantedBy(ClientID(id)), "b, no longer held, was released")
		require.NotContains(t, s.orphans, ClientID(id))
		s.compactJournal()
	})
	waitCompacted(t, s)
	_, err = os.Stat(path + ".new")
	require.ErrorIs(t, err, os.ErrNotExist, "the snapshot replaced the journal")
	stop()

	s, stop = journalServer(t, dir)
	defer stop()
	query(t, s, func(t require.TestingT) {
		require.Equal(t, []string{"c"}, s.core.WantedBy(ClientID(id)))
		require.Equal(t, 1, s.core.NTasks())
		st := s.sharedState()
		require.Equal(t, "x1", string(st.vars["v"].val.data))
		require.Equal(t, 1, st.queues["q"].len())
		require.True(t, st.events["e"].set)
	})
}

// A journal that is not one is refused with its path, rather than overwritten.
func TestJournalRefusesForeignFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, journalFile), []byte("not a journal at all\n"), 0o600))
	cfg := DefaultServerConfig()
	cfg.Port, cfg.Journal = 0, dir
	_, err := NewServer(cfg)
	require.ErrorContains(t, err, "is not a Shoal journal")
}

// Workers the journal knew are waited for, then joined together with what they hold.
func TestJournalRecoveryWaitsForKnownWorkers(t *testing.T) {
	dir := t.TempDir()
	s, stop := journalServer(t, dir)
	c, _ := dialClient(t, s)
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpUpdateGraph, ID: 1, Wanted: []string{"k"},
		Tasks: []graph.Task{{Key: "k", Kind: graph.KindGo, Func: "inc"}}}))
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpInfo, ID: 2})) // answered after the graph is in
	recvOp(t, c, wire.OpInfoReply)
	query(t, s, func(t require.TestingT) {
		s.journalWorker("w1", true)
		s.journalWorker("w2", true)
		s.journalWorker("w2", false)
	})
	stop()
	s, stop = journalServer(t, dir)
	defer stop()
	query(t, s, func(t require.TestingT) {
		require.NotNil(t, s.recov)
		require.Equal(t, map[string]bool{"w1": true}, s.recov.expect, "w2 had left")
		require.True(t, s.recov.hold(EvWorkerJoined{Worker: 7, Name: "w1", Addr: "127.0.0.1:1", NThreads: 1, Functions: []string{"inc"},
			Holds: []wire.Item{{Key: "k", Encoding: wire.EncMsgpack, NBytes: 3}}}))
		s.recoveryTick(s.cfg.Clock())
		require.Nil(t, s.recov, "every known worker is back")
		require.Equal(t, Memory, s.core.State("k"), "its result was kept, not recomputed")
	})
}

// A task that ran on through the restart and finished while its worker was held for the
// others counts as a result the worker holds: not dropped (a run again, a value the worker
// keeps that the scheduler never frees).
func TestJournalRecoveryKeepsResultsFinishedWhileHeld(t *testing.T) {
	dir := t.TempDir()
	s, stop := journalServer(t, dir)
	c, _ := dialClient(t, s)
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpUpdateGraph, ID: 1, Wanted: []string{"k", "j"},
		Tasks: []graph.Task{{Key: "k", Kind: graph.KindGo, Func: "inc"}, {Key: "j", Kind: graph.KindGo, Func: "inc"}}}))
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpInfo, ID: 2}))
	recvOp(t, c, wire.OpInfoReply)
	query(t, s, func(t require.TestingT) { s.journalWorker("w1", true) })
	stop()
	s, stop = journalServer(t, dir)
	defer stop()
	query(t, s, func(t require.TestingT) {
		require.True(t, s.recov.hold(EvWorkerJoined{Worker: 7, Name: "w1", Addr: "127.0.0.1:1", NThreads: 1,
			Functions: []string{"inc"}}))
		w := &workerConn{id: 7}
		s.onTaskFinished(w, &wire.TaskFinished{Key: "k", Encoding: wire.EncMsgpack, NBytes: 3})
		s.onTaskFinished(w, &wire.TaskFinished{Key: "j", Encoding: wire.EncMsgpack, NBytes: 3, Keys: []string{"f"}})
		s.recoveryTick(s.cfg.Clock())
		require.Nil(t, s.recov)
		require.Equal(t, Memory, s.core.State("k"), "the result that finished while its worker was held was dropped")
		require.NotEqual(t, Memory, s.core.State("j"), "a result holding futures joined without them")
	})
}

// A client's graphs that the scheduler never read before it died (sent, still in flight) are
// not reported lost when the client resumes: resumed says which update_graph id the scheduler
// has last (n) and which held keys it does not know, and the client sends those graphs again.
// The last id survives a compaction.
func TestJournalResumeAfterGraphsInFlight(t *testing.T) {
	dir := t.TempDir()
	s, stop := journalServer(t, dir)
	c, id := dialClient(t, s)
	for i, key := range []string{"a", "b"} {
		require.NoError(t, c.Send(&wire.Msg{Op: wire.OpUpdateGraph, ID: uint64(i + 1), Wanted: []string{key},
			Tasks: []graph.Task{{Key: key, Kind: graph.KindGo, Func: "inc"}}}))
	}
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpWhoHas, ID: 50, Keys: []string{"a"}}))
	recvOp(t, c, wire.OpWhoHasReply) // both graphs were read
	stop()

	// graph 3 (key x) was sent but the scheduler died first
	s, stop = journalServer(t, dir)
	c, _ = dialClient(t, s)
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpResume, ID: 1, Client: id, N: 3, Keys: []string{"a", "b", "x"}}))
	r := recvOp(t, c, wire.OpResumed)
	require.Equal(t, int64(2), r.N, "the last graph the scheduler read")
	require.Equal(t, []string{"x"}, r.Keys, "held keys the scheduler does not know")
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpUpdateGraph, ID: 3, Wanted: []string{"x"},
		Tasks: []graph.Task{{Key: "x", Kind: graph.KindGo, Func: "inc"}}}))
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpWhoHas, ID: 51, Keys: []string{"x"}}))
	for {
		m, _, err := c.Recv()
		require.NoError(t, err)
		require.False(t, m.Op == wire.OpKeyState && m.State == "lost", "%s reported lost", m.Key)
		if m.Op == wire.OpWhoHasReply {
			break
		}
	}
	query(t, s, func(t require.TestingT) {
		wanted := s.core.WantedBy(ClientID(id))
		slices.Sort(wanted)
		require.Equal(t, []string{"a", "b", "x"}, wanted)
		s.compactJournal()
	})
	waitCompacted(t, s)
	stop()

	s, stop = journalServer(t, dir)
	defer stop()
	c, _ = dialClient(t, s)
	require.NoError(t, c.Send(&wire.Msg{Op: wire.OpResume, ID: 1, Client: id, N: 4, Keys: []string{"a", "y"}}))
	r = recvOp(t, c, wire.OpResumed)
	require.Equal(t, int64(3), r.N, "the last graph id came through the compaction")
	require.Equal(t, []string{"y"}, r.Keys)
}
