package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

// Every kind of bad input gets a clear error to its sender, and the cluster keeps serving a
// well-behaved client afterwards.
func TestE2EBadInput(t *testing.T) {
	c := startTokenCluster(t, 2)
	good := c.connect(t)
	ctx := ctxT(t, 90*time.Second)
	infos, err := good.Info(ctx)
	require.NoError(t, err)
	dataAddr := infos[0].Address

	stillServes := func(t *testing.T) {
		t.Helper()
		g := client.NewGraph()
		futs, err := good.Submit(ctx, g, g.Go("", "add", 20, 22))
		require.NoError(t, err)
		v, err := futs[0].Result(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(42), asInt(t, v))
		futs[0].Release()
	}

	t.Run("random bytes on every port", func(t *testing.T) {
		for _, addr := range []string{c.Scheduler, dataAddr, c.Gossip, hostPort(c.Dashboard)} {
			nc, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			junk := make([]byte, 4096)
			rand.Read(junk)
			nc.Write(junk)
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 512)
			nc.Read(buf) // an answer or a close; either way no hang and no crash
			nc.Close()
			if u, err := net.Dial("udp", addr); err == nil && addr == c.Gossip {
				u.Write(junk)
				u.Close()
			}
		}
		stillServes(t)
	})

	t.Run("wrong magic", func(t *testing.T) {
		nc, err := net.Dial("tcp", c.Scheduler)
		require.NoError(t, err)
		defer nc.Close()
		nc.Write([]byte("HELLO, ANYONE?"))
		err = wire.ReadAnswer(nc)
		var herr *wire.HandshakeError
		require.True(t, errors.As(err, &herr), "%v", err)
		require.Equal(t, wire.CodeBadMagic, herr.Code())
	})

	t.Run("wrong protocol version", func(t *testing.T) {
		nc, err := net.Dial("tcp", c.Scheduler)
		require.NoError(t, err)
		defer nc.Close()
		require.NoError(t, wire.WriteHello(nc, wire.ClientHello{Version: 77, Role: wire.RoleClient, Token: "s3cret"}))
		err = wire.ReadAnswer(nc)
		var herr *wire.HandshakeError
		require.True(t, errors.As(err, &herr), "%v", err)
		require.Equal(t, wire.CodeBadVersion, herr.Code())
		require.Contains(t, herr.Message, "version 77")
	})

	t.Run("wrong and missing token", func(t *testing.T) {
		for _, addr := range []string{c.Scheduler, dataAddr} {
			for tok, want := range map[string]string{"nope": "wrong token", "": "requires a token"} {
				_, err := client.Connect(ctx, addr, client.Options{Token: tok})
				if addr == dataAddr {
					_, err = wire.Dial(ctx, addr, wire.DialOptions{Role: wire.RolePeer, Token: tok})
				}
				var herr *wire.HandshakeError
				require.True(t, errors.As(err, &herr), "%v", err)
				require.Equal(t, wire.CodeAuthFailed, herr.Code())
				require.Contains(t, herr.Message, want)
			}
		}
	})

	t.Run("frame larger than the limit", func(t *testing.T) {
		for _, addr := range []string{c.Scheduler, dataAddr} {
			role := wire.RoleClient
			conn, nc := rawConn(t, addr, role, "s3cret")
			if addr == c.Scheduler {
				m, _, err := conn.Recv() // welcome
				require.NoError(t, err)
				require.Equal(t, wire.OpWelcome, m.Op)
			}
			b := binary.BigEndian.AppendUint32(nil, 2)
			b = binary.BigEndian.AppendUint64(b, 10)
			b = binary.BigEndian.AppendUint64(b, 1<<40)
			nc.Write(b)
			m, _, err := conn.Recv()
			require.NoError(t, err)
			require.Equal(t, wire.OpError, m.Op)
			require.Equal(t, wire.CodeFrameTooLarge, m.Code)
			_, _, err = conn.Recv()
			require.Error(t, err, "the connection is closed after a too-large frame")
		}
		stillServes(t)
	})

	rejected := func(t *testing.T, code string, tasks ...graph.Task) {
		t.Helper()
		g := client.NewGraph()
		for _, tk := range tasks {
			g.Add(tk)
		}
		futs, err := good.Submit(ctx, g, client.Key(tasks[0].Key))
		require.NoError(t, err)
		err = futs[0].Wait(ctx)
		var werr *wire.Error
		require.True(t, errors.As(err, &werr), "%v", err)
		require.Equal(t, code, werr.Code, werr.Message)
		futs[0].Release()
	}
	goTask := func(key, fn string, args ...graph.Arg) graph.Task {
		return graph.Task{Key: key, Kind: graph.KindGo, Func: fn, Args: args}
	}

	t.Run("graph with a cycle", func(t *testing.T) {
		rejected(t, wire.CodeGraphCycle, goTask("cyc-a", "inc", graph.Ref("cyc-b")), goTask("cyc-b", "inc", graph.Ref("cyc-a")))
		stillServes(t)
	})
	t.Run("missing dependency", func(t *testing.T) {
		rejected(t, wire.CodeMissingDependency, goTask("orphan", "inc", graph.Ref("no-such-key")))
	})
	t.Run("unknown function", func(t *testing.T) {
		rejected(t, wire.CodeUnknownFunction, goTask("mystery", "no_such_function"))
	})
	t.Run("same key, different definition", func(t *testing.T) {
		g := client.NewGraph()
		futs, err := good.Submit(ctx, g, g.Add(goTask("dup", "inc", graph.Lit(1))))
		require.NoError(t, err)
		require.NoError(t, futs[0].Wait(ctx))
		rejected(t, wire.CodeKeyConflict, goTask("dup-user", "inc", graph.Ref("dup")), goTask("dup", "inc", graph.Lit(2)))
		v, err := futs[0].Result(ctx)
		require.NoError(t, err)
		require.Equal(t, int64(2), asInt(t, v), "the original definition stands")
	})
	t.Run("task that panics", func(t *testing.T) {
		g := client.NewGraph()
		p := g.Go("panicky", "panic", "boom")
		dep := g.Go("downstream", "inc", p)
		futs, err := good.Submit(ctx, g, p, dep)
		require.NoError(t, err)
		for _, f := range futs {
			err := f.Wait(ctx)
			var werr *wire.Error
			require.True(t, errors.As(err, &werr), "%v", err)
			require.Equal(t, wire.CodeTaskPanic, werr.Code)
			require.Contains(t, werr.Message, "boom")
		}
		stillServes(t)
	})
	t.Run("task that returns an error", func(t *testing.T) {
		g := client.NewGraph()
		futs, err := good.Submit(ctx, g, g.Go("failing", "fail", "no good"))
		require.NoError(t, err)
		err = futs[0].Wait(ctx)
		var werr *wire.Error
		require.True(t, errors.As(err, &werr), "%v", err)
		require.Equal(t, wire.CodeTaskError, werr.Code)
		require.Contains(t, werr.Message, "no good")
	})
	t.Run("unknown op", func(t *testing.T) {
		conn, _ := rawConn(t, c.Scheduler, wire.RoleClient, "s3cret")
		conn.Recv() // welcome
		require.NoError(t, conn.Send(&wire.Msg{Op: "launch_missiles", ID: 5}))
		m, _, err := conn.Recv()
		require.NoError(t, err)
		require.Equal(t, wire.CodeUnknownOp, m.Code)
	})
	stillServes(t)
}

func rawConn(t *testing.T, addr string, role wire.Role, token string) (*wire.Conn, net.Conn) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	conn, err := wire.ClientHandshake(context.Background(), nc, wire.DialOptions{Role: role, Token: token})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Abort() })
	return conn, nc
}

// hostPort is the host:port of a URL such as "http://127.0.0.1:8787/".
func hostPort(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	return p.Host
}
