package shoal_test

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	shoal "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// A graph the client wrote but the scheduler never read (it died with the graph in flight)
// is sent again when the client resumes: the resume names the last graph written, the
// scheduler's resumed lists the keys it does not know, and the client sends the graphs again,
// wants those keys, and releases what the graphs want that it no longer holds. Against a
// scripted scheduler, so the loss is certain.
func TestResumeSendsUnreadGraphsAgain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accept := func() *wire.Conn {
		nc, err := ln.Accept()
		require.NoError(t, err)
		c, err := wire.Accept(nc, "", wire.DefaultLimits(), wire.RoleClient)
		require.NoError(t, err)
		t.Cleanup(func() { c.Abort() })
		require.NoError(t, c.Send(&wire.Msg{Op: wire.OpWelcome, Client: 7}))
		return c
	}
	recv := func(c *wire.Conn, op string) *wire.Msg {
		m, _, err := c.Recv()
		require.NoError(t, err)
		require.Equal(t, op, m.Op)
		return m
	}
	ctx := ctxT(t)
	connected := make(chan *shoal.Client, 1)
	go func() {
		c, err := shoal.Connect(ctx, ln.Addr().String(), shoal.Options{})
		if err != nil {
			t.Error(err)
		}
		connected <- c
	}()
	first := accept()
	cl := <-connected
	require.NotNil(t, cl)
	defer cl.Close()

	g := shoal.NewGraph()
	k := g.Add(graph.Task{Key: "k", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(1)}})
	futs, err := cl.Submit(ctx, g, k)
	require.NoError(t, err)
	g2 := shoal.NewGraph()
	j := g2.Add(graph.Task{Key: "j", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Lit(2)}})
	dropped, err := cl.Submit(ctx, g2, j)
	require.NoError(t, err)
	dropped[0].Release()
	sent := recv(first, wire.OpUpdateGraph)
	sent2 := recv(first, wire.OpUpdateGraph)
	require.Equal(t, []string{"j"}, recv(first, wire.OpReleaseKeys).Keys)
	first.Abort() // the scheduler dies without having acted on any of it

	second := accept()
	resume := recv(second, wire.OpResume)
	require.Equal(t, int64(sent2.ID), resume.N, "resume names the last graph written")
	require.Equal(t, []string{"k"}, resume.Keys)
	// a graph submitted now, before the resume is answered, waits for the graphs it may need
	g3 := shoal.NewGraph()
	l := g3.Add(graph.Task{Key: "l", Kind: graph.KindGo, Func: "inc", Args: []graph.Arg{graph.Ref("k")}})
	later := make(chan error, 1)
	go func() { _, err := cl.Submit(ctx, g3, l); later <- err }()
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, second.Send(&wire.Msg{Op: wire.OpResumed, ID: resume.ID, Client: 7, N: 0, Keys: []string{"k"}}))
	again := recv(second, wire.OpUpdateGraph)
	require.Equal(t, sent.ID, again.ID)
	require.Equal(t, "k", again.Tasks[0].Key)
	require.Equal(t, sent2.ID, recv(second, wire.OpUpdateGraph).ID)
	require.Equal(t, []string{"k"}, recv(second, wire.OpWanted).Keys)
	require.Equal(t, []string{"j"}, recv(second, wire.OpReleaseKeys).Keys, "j's future was released")
	require.Equal(t, []string{"l"}, recv(second, wire.OpUpdateGraph).Wanted, "the graph submitted meanwhile comes last")
	require.NoError(t, <-later)
	require.NoError(t, second.Send(&wire.Msg{Op: wire.OpKeyState, Key: "k", State: "memory", Worker: "127.0.0.1:1"}))
	require.NoError(t, futs[0].Wait(ctx))
}
