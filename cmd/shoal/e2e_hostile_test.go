package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// The crash matrix: for every op on every port that speaks the Shoal protocol, an
// authenticated peer sends the hostile variants that once killed a process (huge declared
// counts in every array and map field, deep nesting, wrong types, truncated frames, frames
// declared and never sent); HTTP and gossip get theirs. Throughout, the processes stay alive,
// the scheduler's memory stays near its idle size, and a canary client keeps getting correct
// results.
func TestE2ECrashMatrix(t *testing.T) {
	c := startTokenCluster(t, 2)
	good := c.connect(t)
	ctx := ctxT(t, 5*time.Minute)
	infos, err := good.Info(ctx)
	require.NoError(t, err)
	dataAddr := infos[0].Address
	sched := c.cmd.Process.Pid
	workers := childPIDs(sched)
	require.Len(t, workers, 2)

	can := startCanary(t, good)
	time.Sleep(time.Second) // warm: the canary's graphs have run, buffers exist
	idle := rssOf(t, sched)
	idleLat := can.latencies()
	limit := 2 * idle
	t.Logf("scheduler idle RSS %d MiB (bound %d MiB)", idle>>20, limit>>20)

	healthy := func(t *testing.T, what string) {
		t.Helper()
		for _, pid := range append([]int{sched}, workers...) {
			require.True(t, alive(pid), "%s: process %d died\n%s", what, pid, c.logs())
		}
		if rss := rssOf(t, sched); rss > limit {
			t.Errorf("%s: scheduler RSS %d MiB, over 2× its idle %d MiB", what, rss>>20, idle>>20)
		}
		require.Zero(t, can.failures(), "%s: the canary client saw failures: %v", what, can.lastErr())
	}

	ports := []struct {
		name    string
		addr    string
		role    wire.Role
		welcome bool // the server speaks first (a client's welcome)
	}{
		{"control/client", c.Scheduler, wire.RoleClient, true},
		{"control/worker", c.Scheduler, wire.RoleWorker, false},
		{"control/admin", c.Scheduler, wire.RoleAdmin, false},
		{"data/peer", dataAddr, wire.RolePeer, false},
		{"data/client", dataAddr, wire.RoleClient, false},
	}
	for _, p := range ports {
		t.Run(p.name, func(t *testing.T) {
			cases := hostileCases()
			var refused, fieldNamed int
			var mu sync.Mutex
			forEach(cases, 8, func(hc hostileCase) {
				reply, err := sendHostile(ctx, p.addr, p.role, c.token, p.welcome, hc)
				mu.Lock()
				defer mu.Unlock()
				if hc.field == "" {
					return // truncated or never-sent frames: a close is the answer
				}
				if err != nil {
					t.Errorf("%s: no error reply: %v", hc.name, err)
					return
				}
				if reply.Op == wire.OpError && reply.Code == wire.CodeProtocol {
					refused++
					if strings.Contains(reply.Message, fmt.Sprintf("%q", hc.field)) {
						fieldNamed++
					} else {
						t.Errorf("%s: the error does not name the field: %s", hc.name, reply.Message)
					}
				} else {
					t.Errorf("%s: answered %s %s %s", hc.name, reply.Op, reply.Code, reply.Message)
				}
			})
			t.Logf("%d hostile messages; %d refused with a protocol error naming the field", len(cases), fieldNamed)
			healthy(t, p.name)
		})
	}

	t.Run("frames declared and never sent", func(t *testing.T) {
		var held []net.Conn
		defer func() {
			for _, nc := range held {
				nc.Close()
			}
		}()
		for i := range 100 {
			p := ports[i%len(ports)]
			nc, err := wire.DialRaw(ctx, p.addr, wire.DialOptions{Role: p.role, Token: c.token})
			require.NoError(t, err)
			held = append(held, nc)
			b := binary.BigEndian.AppendUint32(nil, 2)
			b = binary.BigEndian.AppendUint64(b, 1)
			b = binary.BigEndian.AppendUint64(b, 1<<30)
			_, err = nc.Write(append(b, 0x80, 0x00)) // the header frame, then one byte of a GiB
			require.NoError(t, err)
		}
		time.Sleep(500 * time.Millisecond)
		for _, pid := range workers {
			t.Logf("worker %d RSS with 100 GiB declared: %d MiB", pid, rssOf(t, pid)>>20)
		}
		healthy(t, "100 connections declaring 1 GiB frames")
	})

	t.Run("http", func(t *testing.T) {
		host := hostPort(c.Dashboard)
		// slow loris: headers that never end
		var slow []net.Conn
		for range 50 {
			nc, err := net.Dial("tcp", host)
			require.NoError(t, err)
			fmt.Fprintf(nc, "GET /api/v1/workers HTTP/1.1\r\nHost: x\r\nX-Slow: ")
			slow = append(slow, nc)
		}
		// a huge header is refused, not buffered
		nc, err := net.Dial("tcp", host)
		require.NoError(t, err)
		fmt.Fprintf(nc, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 1<<20))
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		status, _ := bufio.NewReader(nc).ReadString('\n')
		require.Contains(t, status, "431")
		nc.Close()
		// junk on the websocket, after an authenticated upgrade
		ws := wsUpgrade(t, host, c.token)
		junk := bytes.Repeat([]byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 100)
		ws.Write(junk)
		ws.Close()
		for _, nc := range slow {
			nc.Close()
		}
		r, err := http.Get(c.Dashboard + "health")
		require.NoError(t, err)
		r.Body.Close()
		require.Equal(t, 200, r.StatusCode)
		healthy(t, "http")
	})

	t.Run("gossip junk", func(t *testing.T) {
		u, err := net.Dial("udp", c.Gossip)
		require.NoError(t, err)
		for i := range 200 {
			u.Write(bytes.Repeat([]byte{byte(i)}, 1+i*7))
		}
		u.Close()
		tc, err := net.Dial("tcp", c.Gossip)
		require.NoError(t, err)
		tc.Write(bytes.Repeat([]byte{0xff}, 1<<16))
		tc.Close()
		healthy(t, "gossip")
	})

	can.stop()
	attack := can.latencies()
	t.Logf("canary: %d graphs idle, %d under attack; latency p50/p99 idle %v/%v, under attack %v/%v",
		len(idleLat), len(attack), pct(idleLat, 50), pct(idleLat, 99), pct(attack, 50), pct(attack, 99))
	t.Logf("scheduler RSS idle %d MiB, now %d MiB, peak %d MiB", idle>>20, rssOf(t, sched)>>20, peakRSSOf(t, sched)>>20)
	healthy(t, "the end")
}

// hostileCase is one message to send after the handshake.
type hostileCase struct {
	name  string
	field string // the header field the decoder must name in its refusal ("": no reply expected)
	raw   []byte // the bytes to write (frames included)
	half  bool   // write, then close the writing side (truncated frames)
}

func hostileCases() []hostileCase {
	var out []hostileCase
	fields := wire.HeaderFields()
	huge := map[string][]byte{
		"array32": {0xdd, 0xff, 0xff, 0xff, 0xff},
		"map32":   {0xdf, 0xff, 0xff, 0xff, 0xff},
		"str32":   {0xdb, 0xff, 0xff, 0xff, 0xff},
	}
	for _, op := range wire.Ops {
		for _, f := range fields {
			if f == "op" {
				continue
			}
			out = append(out, hostileCase{name: op + "." + f + "/array32", field: f, raw: oneFrame(hdrWith(op, f, huge["array32"], 64))})
			out = append(out, hostileCase{name: op + "." + f + "/wrong-type", field: f, raw: oneFrame(hdrWith(op, f, []byte{0x91, 0x01}, 0))})
		}
		out = append(out,
			hostileCase{name: op + ".unknown/array32", field: "zzz", raw: oneFrame(hdrWith(op, "zzz", huge["array32"], 64))},
			hostileCase{name: op + ".unknown/deep", field: "zzz", raw: oneFrame(hdrWith(op, "zzz", bytes.Repeat([]byte{0x91}, 1<<20), 0))},
			hostileCase{name: op + "/truncated", raw: truncatedFrame(hdrWith(op, "key", []byte{0xa1, 'k'}, 0)), half: true},
		)
	}
	for _, f := range fields {
		for _, kind := range []string{"map32", "str32"} {
			out = append(out, hostileCase{name: "update_graph." + f + "/" + kind, field: f, raw: oneFrame(hdrWith("update_graph", f, huge[kind], 64))})
		}
	}
	out = append(out, hostileCase{name: "op/wrong-type", field: "op", raw: oneFrame([]byte{0x81, 0xa2, 'o', 'p', 0x91, 0x01})})
	return out
}

// hdrWith is a header {"op": op, field: val} followed by pad nil bytes (what a lying count
// would be made to cover).
func hdrWith(op, field string, val []byte, pad int) []byte {
	b, _ := msgpack.Marshal(op)
	h := append([]byte{0x82, 0xa2, 'o', 'p'}, b...)
	k, _ := msgpack.Marshal(field)
	h = append(append(h, k...), val...)
	return append(h, bytes.Repeat([]byte{0xc0}, pad)...)
}

func oneFrame(hdr []byte) []byte {
	var b bytes.Buffer
	wire.WriteFrames(&b, [][]byte{hdr})
	return b.Bytes()
}

func truncatedFrame(hdr []byte) []byte {
	b := oneFrame(hdr)
	return b[:len(b)-len(hdr)/2]
}

// sendHostile handshakes as role, sends hc and returns the first non-welcome message the
// server answers with (an error, normally) before it closes the connection.
func sendHostile(ctx context.Context, addr string, role wire.Role, token string, welcome bool, hc hostileCase) (*wire.Msg, error) {
	nc, err := wire.DialRaw(ctx, addr, wire.DialOptions{Role: role, Token: token})
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := nc.Write(hc.raw); err != nil {
		return nil, err
	}
	if hc.half {
		nc.(*net.TCPConn).CloseWrite()
	}
	br := bufio.NewReader(nc)
	for range 3 {
		frames, err := wire.ReadFrames(br, wire.DefaultLimits())
		if err != nil {
			return nil, err
		}
		m, err := wire.DecodeHeader(frames[0])
		if err != nil {
			return nil, err
		}
		if welcome && m.Op == wire.OpWelcome {
			continue
		}
		return m, nil
	}
	return nil, errors.New("no answer")
}

func forEach[T any](items []T, par int, f func(T)) {
	ch := make(chan T)
	var wg sync.WaitGroup
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range ch {
				f(it)
			}
		}()
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
}

// canary submits a small graph again and again, checking every answer.
type canary struct {
	mu    sync.Mutex
	lat   []time.Duration
	fails int
	err   error
	done  chan struct{}
	wg    sync.WaitGroup
}

func startCanary(t *testing.T, cl *client.Client) *canary {
	cn := &canary{done: make(chan struct{})}
	cn.wg.Add(1)
	go func() {
		defer cn.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-cn.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			g := client.NewGraph()
			futs, err := cl.Submit(ctx, g, g.Go("", "add", i, 1))
			var v any
			if err == nil {
				v, err = futs[0].Result(ctx)
				futs[0].Release()
			}
			cancel()
			cn.mu.Lock()
			cn.lat = append(cn.lat, time.Since(start))
			if err == nil && fmt.Sprint(v) != fmt.Sprint(i+1) {
				err = fmt.Errorf("add(%d, 1) = %v", i, v)
			}
			if err != nil {
				cn.fails++
				cn.err = err
			}
			cn.mu.Unlock()
		}
	}()
	t.Cleanup(cn.stop)
	return cn
}

func (cn *canary) stop() {
	select {
	case <-cn.done:
	default:
		close(cn.done)
	}
	cn.wg.Wait()
}

// latencies returns and forgets the latencies measured so far.
func (cn *canary) latencies() []time.Duration {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	out := cn.lat
	cn.lat = nil
	return out
}

func (cn *canary) failures() int  { cn.mu.Lock(); defer cn.mu.Unlock(); return cn.fails }
func (cn *canary) lastErr() error { cn.mu.Lock(); defer cn.mu.Unlock(); return cn.err }

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// rssOf is a process's resident set size in bytes; peakRSSOf its highest so far.
func rssOf(t *testing.T, pid int) int64 { return procStatus(t, pid, "VmRSS:") }

func peakRSSOf(t *testing.T, pid int) int64 { return procStatus(t, pid, "VmHWM:") }

func procStatus(t *testing.T, pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	t.Fatalf("no %s for %d", field, pid)
	return 0
}

// wsUpgrade opens the dashboard's websocket with the token, returning the raw connection.
func wsUpgrade(t *testing.T, host, token string) net.Conn {
	nc, err := net.Dial("tcp", host)
	require.NoError(t, err)
	fmt.Fprintf(nc, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n", host, token)
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	status, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	require.Contains(t, status, "101")
	return nc
}
