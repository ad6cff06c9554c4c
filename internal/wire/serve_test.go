package wire

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// flakyListener fails its first n Accept calls with EMFILE, as a process out of descriptors.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// serveForTest runs a Server on a loopback port; handle gets every handshaken connection.
func serveForTest(t *testing.T, cfg ServeConfig, fails int32, handle func(*Conn)) (addr string, srv *Server, health func() []error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(fails)
	var mu sync.Mutex
	var reports []error
	cfg.AcceptFailing = func(err error) { mu.Lock(); reports = append(reports, err); mu.Unlock() }
	srv = NewServer(cfg)
	var closed atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Accept(fl, closed.Load, func(f func()) bool { go f(); return true }, handle)
	}()
	t.Cleanup(func() { closed.Store(true); ln.Close(); wg.Wait() })
	return ln.Addr().String(), srv, func() []error { mu.Lock(); defer mu.Unlock(); return append([]error(nil), reports...) }
}

func TestServerSurvivesAcceptErrors(t *testing.T) {
	addr, _, health := serveForTest(t, ServeConfig{MaxConns: map[Role]int{RoleClient: 4}}, 5, func(c *Conn) {
		c.Send(&Msg{Op: "hi"})
		c.Close()
	})
	c, err := Dial(context.Background(), addr, DialOptions{Role: RoleClient})
	require.NoError(t, err, "the accept loop must survive EMFILE and serve again")
	m, _, err := c.Recv()
	require.NoError(t, err)
	require.Equal(t, "hi", m.Op)
	c.Close()
	reports := health()
	require.Len(t, reports, 2, "told once when failing starts and once when it ends: %v", reports)
	require.ErrorIs(t, reports[0], syscall.EMFILE)
	require.NoError(t, reports[1])
}

func TestServerCapsConnectionsPerRole(t *testing.T) {
	release := make(chan struct{})
	addr, srv, _ := serveForTest(t, ServeConfig{MaxConns: map[Role]int{RoleClient: 2, RolePeer: 1}}, 0, func(c *Conn) {
		<-release
		c.Close()
	})
	ctx := context.Background()
	var open []*Conn
	for range 2 {
		c, err := Dial(ctx, addr, DialOptions{Role: RoleClient})
		require.NoError(t, err)
		open = append(open, c)
	}
	_, err := Dial(ctx, addr, DialOptions{Role: RoleClient})
	var herr *HandshakeError
	require.ErrorAs(t, err, &herr)
	require.Equal(t, CodeBusy, herr.Code())
	p, err := Dial(ctx, addr, DialOptions{Role: RolePeer})
	require.NoError(t, err, "another role has its own cap")
	_, err = Dial(ctx, addr, DialOptions{Role: RoleAdmin})
	require.ErrorAs(t, err, &herr)
	require.Equal(t, CodeBadRole, herr.Code(), "a role without a cap is not served")
	require.Equal(t, 2, srv.Open(RoleClient))
	close(release)
	require.Eventually(t, func() bool { return srv.Open(RoleClient) == 0 }, 5*time.Second, time.Millisecond)
	c, err := Dial(ctx, addr, DialOptions{Role: RoleClient})
	require.NoError(t, err, "freed slots are used again")
	for _, x := range append(open, p, c) {
		x.Close()
	}
}

func TestServerTimeouts(t *testing.T) {
	got := make(chan error, 4)
	addr, _, _ := serveForTest(t, ServeConfig{
		MaxConns:       map[Role]int{RoleClient: 8},
		IdleTimeout:    map[Role]time.Duration{RoleClient: 200 * time.Millisecond},
		MessageTimeout: 200 * time.Millisecond,
	}, 0, func(c *Conn) {
		for {
			if _, _, err := c.Recv(); err != nil {
				got <- err
				c.Close()
				return
			}
		}
	})
	ctx := context.Background()
	// an idle connection is dropped after the idle timeout
	idle, err := DialRaw(ctx, addr, DialOptions{Role: RoleClient})
	require.NoError(t, err)
	defer idle.Close()
	require.ErrorIs(t, <-got, ErrIdle)
	// a connection that stalls in the middle of a message is dropped (slow loris)
	slow, err := DialRaw(ctx, addr, DialOptions{Role: RoleClient})
	require.NoError(t, err)
	defer slow.Close()
	slow.Write([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 100, 0x81})
	require.ErrorIs(t, <-got, ErrStalled)
	// one that keeps talking stays
	busy, err := Dial(ctx, addr, DialOptions{Role: RoleClient})
	require.NoError(t, err)
	defer busy.Close()
	for range 6 {
		require.NoError(t, busy.Send(&Msg{Op: "ping"}))
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case err := <-got:
		t.Fatalf("a talking connection was dropped: %v", err)
	default:
	}
}

// A peer that asks for a large answer and never reads it is dropped after the message
// timeout, instead of holding the connection and its buffers forever.
func TestServerDropsPeerThatStopsReading(t *testing.T) {
	got := make(chan error, 1)
	addr, _, _ := serveForTest(t, ServeConfig{MaxConns: map[Role]int{RoleClient: 2}, MessageTimeout: 200 * time.Millisecond}, 0,
		func(c *Conn) {
			defer c.Close()
			if _, _, err := c.Recv(); err != nil {
				got <- err
				return
			}
			c.Send(&Msg{Op: "big"}, make([]byte, 64<<20))
			_, _, err := c.Recv() // ends when the writer gives up and closes the connection
			got <- err
		})
	nc, err := DialRaw(context.Background(), addr, DialOptions{Role: RoleClient})
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, WriteFrames(nc, [][]byte{mustHeader(t, &Msg{Op: "ask"})}))
	select {
	case err := <-got:
		require.Error(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the server kept a connection whose peer does not read")
	}
}

func mustHeader(t *testing.T, m *Msg) []byte {
	b, err := EncodeHeader(m)
	require.NoError(t, err)
	return b
}
