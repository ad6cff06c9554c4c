package worker

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	require.NoError(t, good.Validate())
	for name, c := range map[string]struct {
		mut  func(*Config)
		want string
	}{
		"threads":  {func(c *Config) { c.NThreads = 0 }, "NThreads 0"},
		"port":     {func(c *Config) { c.DataPort = 70000 }, "DataPort 70000"},
		"spill":    {func(c *Config) { c.SpillFraction = 1.5 }, "SpillFraction 1.5"},
		"memory":   {func(c *Config) { c.MemoryLimit = -1 }, "MemoryLimit -1"},
		"python":   {func(c *Config) { c.Python = "" }, "Python is empty"},
		"procs":    {func(c *Config) { c.NProcsPython = 0 }, "NProcsPython 0"},
		"hb":       {func(c *Config) { c.HeartbeatInterval = 0 }, "HeartbeatInterval 0s"},
		"fetches":  {func(c *Config) { c.MaxConcurrentFetches = 0 }, "MaxConcurrentFetches 0"},
		"resource": {func(c *Config) { c.Resources = map[string]float64{"GPU": -1} }, `Resources["GPU"]`},
		"host":     {func(c *Config) { c.Host = "" }, "Host is empty"},
	} {
		c2 := DefaultConfig()
		c.mut(&c2)
		require.ErrorContains(t, c2.Validate(), c.want, name)
		_, err := New(c2)
		require.ErrorContains(t, err, c.want, name)
	}
}

func TestRegisterPanics(t *testing.T) {
	require.PanicsWithValue(t, "worker: Register with an empty name", func() { Register("", builtinInc) })
	require.Panics(t, func() { Register("inc", builtinInc) })
	require.Panics(t, func() { Register("nil-fn", nil) })
	names := Registered()
	require.True(t, strings.Compare(names[0], names[len(names)-1]) < 0)
	for _, n := range []string{"noop", "identity", "inc", "add", "sum", "sleep", "fail", "panic", "bytes", "arrow_table"} {
		require.Contains(t, names, n)
	}
}

func TestCoercion(t *testing.T) {
	for _, v := range []any{int8(-3), int16(-3), int32(-3), int64(-3), int(-3), float32(-3), float64(-3)} {
		i, err := Int64(v)
		require.NoError(t, err, "%T", v)
		require.Equal(t, int64(-3), i)
	}
	for _, v := range []any{uint8(3), uint16(3), uint32(3), uint64(3), uint(3)} {
		i, err := Int64(v)
		require.NoError(t, err)
		require.Equal(t, int64(3), i)
	}
	_, err := Int64(uint64(math.MaxUint64))
	require.ErrorContains(t, err, "overflows")
	_, err = Int64(2.5)
	require.Error(t, err)
	_, err = Int64("3")
	require.Error(t, err)
	f, err := Float64(int8(2))
	require.NoError(t, err)
	require.Equal(t, 2.0, f)
}

func TestBuiltins(t *testing.T) {
	ctx := context.Background()
	call := func(name string, args ...any) (any, error) {
		fn, ok := lookup(name)
		require.True(t, ok, name)
		return fn(ctx, args)
	}
	v, err := call("sum", []any{int8(1), uint16(2), int64(3)})
	require.NoError(t, err)
	require.Equal(t, int64(6), v)
	v, err = call("sum", 1, 2.5)
	require.NoError(t, err)
	require.Equal(t, 3.5, v)
	v, err = call("add", int32(2), float32(0.5))
	require.NoError(t, err)
	require.Equal(t, 2.5, v)
	_, err = call("add", 1)
	require.ErrorContains(t, err, "add takes 2 argument(s), got 1")
	v, err = call("sleep", 0, "back")
	require.NoError(t, err)
	require.Equal(t, "back", v)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	fn, _ := lookup("sleep")
	_, err = fn(cctx, []any{3600})
	require.ErrorIs(t, err, context.Canceled)
	v, err = call("noop")
	require.NoError(t, err)
	require.Nil(t, v)
	_, err = call("bytes", -1)
	require.Error(t, err)
}

func TestEncodeDecodeValues(t *testing.T) {
	enc, frames, err := encodeValue(map[string]any{"a": int64(1)})
	require.NoError(t, err)
	require.Equal(t, wire.EncMsgpack, enc)
	v, err := decodeValue(enc, frames)
	require.NoError(t, err)
	require.Equal(t, map[string]any{"a": int64(1)}, v)
	_, err = decodeValue(wire.EncPickle, [][]byte{{0x80}})
	require.ErrorIs(t, err, errPickleToGo)
	_, err = decodeValue(wire.EncArrow, [][]byte{[]byte("not arrow")})
	require.Error(t, err)
	_, err = decodeValue("json", [][]byte{{}})
	require.Error(t, err)
}

func TestCollector(t *testing.T) {
	w := newTestWorker(t, testConfig(t))
	w.Store().Put("k", wire.EncBytes, [][]byte{make([]byte, 123)}, nil)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(w.Collector()))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if m.GetGauge() != nil {
			got[mf.GetName()] = m.GetGauge().GetValue()
		} else {
			got[mf.GetName()] = m.GetCounter().GetValue()
		}
	}
	require.Equal(t, 123.0, got["shoal_worker_memory_bytes"])
	require.Equal(t, 1.0, got["shoal_worker_keys"])
	require.Equal(t, float64(DefaultMemoryLimit), got["shoal_worker_memory_limit_bytes"])
	require.Contains(t, got, "shoal_worker_tasks_executed_total")
}

// FuzzParseData feeds arbitrary item lists and frame counts to the data-reply parser, which
// reads what a peer sent: it must reject or accept, never panic, and never hand out more
// frames than it received.
func FuzzParseData(f *testing.F) {
	f.Add("a", "bytes", 1, 1, uint8(1))
	f.Add("b", "pickle", 3, 2, uint8(2))
	f.Add("a", "msgpack", -1, 0, uint8(1))
	f.Fuzz(func(t *testing.T, key, enc string, nframes, nframes2 int, got uint8) {
		frames := make([][]byte, got%8)
		for i := range frames {
			frames[i] = []byte{byte(i)}
		}
		m := &wire.Msg{Op: wire.OpData, ID: 1, Items: []wire.Item{
			{Key: key, Encoding: enc, NFrames: nframes}, {Key: "a", Encoding: "bytes", NFrames: nframes2}}}
		out, err := parseData(m, frames, 1, []string{"a", "b"}, nil)
		if err != nil {
			return
		}
		n := 0
		for _, r := range out {
			n += len(r.frames)
		}
		require.Equal(t, len(frames), n)
	})
}

// FuzzReadSpill checks that a corrupt spill file is an error, never a panic.
func FuzzReadSpill(f *testing.F) {
	dir := f.TempDir()
	good := dir + "/good"
	require.NoError(f, writeSpill(good, "pickle", [][]byte{[]byte("ab"), {}, []byte("c")}, nil))
	f.Add([]byte("SHSP"))
	f.Add([]byte("SHSP\x06pickle\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := t.TempDir() + "/x"
		require.NoError(t, writeFile(p, b))
		enc, frames, err := readSpill(p)
		if err == nil {
			require.LessOrEqual(t, len(enc), 255)
			require.LessOrEqual(t, frameBytes(frames), int64(len(b)))
		}
	})
}

// A peer that keeps failing is asked again only after a delay that doubles up to a cap, and a
// success clears it: fetches never spin on a broken peer.
func TestPeerBackoff(t *testing.T) {
	require.Equal(t, time.Duration(0), retryDelay(0))
	prev := time.Duration(0)
	for n := 1; n < 40; n++ {
		d := retryDelay(n)
		require.GreaterOrEqual(t, d, prev, "n=%d", n)
		require.LessOrEqual(t, d, maxPeerBackoff, "n=%d", n)
		prev = d
	}
	require.Equal(t, maxPeerBackoff, retryDelay(39))

	p := &peerPool{}
	p.mu.failed = map[string]peerFailures{}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, p.backoff(cancelled, "a:1"), "a peer that never failed is asked at once")
	p.outcome("a:1", errors.New("connection refused"))
	require.ErrorIs(t, p.backoff(cancelled, "a:1"), context.Canceled, "a failed peer must be waited for")
	require.NoError(t, p.backoff(cancelled, "b:1"), "other peers are not held back")
	p.outcome("a:1", nil)
	require.NoError(t, p.backoff(cancelled, "a:1"), "a success clears the backoff")
}

// FuzzDecodeExecHeader: whatever an executor sends, the worker's decoder of its headers
// returns a message or an error, never panics.
func FuzzDecodeExecHeader(f *testing.F) {
	done, _ := wire.EncodeHeader(&wire.Msg{Op: wire.OpDone, ID: 3, Items: []wire.Item{{Key: "k", Encoding: wire.EncPickle, NFrames: 1, NBytes: 9}}})
	f.Add(done)
	ext, _ := appendExt(done, "seg", []any{[]any{1, 0, 4096}})
	f.Add(ext)
	f.Add([]byte{0x83, 0xa2, 'o', 'p', 0xa4, 'd', 'o', 'n', 'e', 0xa5, 'i', 't', 'e', 'm', 's', 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add(append([]byte{0x82, 0xa2, 'o', 'p', 0xa4, 'd', 'o', 'n', 'e', 0xa3, 's', 'e', 'g'}, bytes.Repeat([]byte{0x91}, 500)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		var x execExt
		m, err := decodeExecHeaderExt(b, &x)
		if err == nil && m == nil {
			t.Fatal("no message and no error")
		}
	})
}

// A fetch from a peer that hangs (accepts, handshakes, never answers) ends the moment the
// scheduler says that peer is gone, not after the peer timeout; it is reported without a
// transfer cause (the value went with its holder: lineage, not the fetch-failure count).
func TestPeerGoneCancelsFetchInFlight(t *testing.T) {
	hung, asked := silentPeer(t)
	s := newFakeSched(t, "")
	_, sc, _, _ := s.startWorker(testConfig(t))
	sc.send(goTaskDeps("consumer", "identity", 0, []wire.Dep{{Key: "far", WhoHas: []string{hung}, NBytes: 8}}, ref("far")))
	<-asked
	sc.send(&wire.Msg{Op: wire.OpPeerGone, Worker: hung, Reason: "test"})
	m := sc.expect(wire.OpMissingData)
	require.Equal(t, "far", m.Key)
	require.Equal(t, hung, m.Worker)
	require.Empty(t, m.Message)
}

// heapKeep: an eighth of the memory limit shared by the executors, at most 2 GiB each, and
// nothing when the worker's environment sets glibc's malloc variables itself.
func TestHeapKeep(t *testing.T) {
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "MALLOC_") {
			t.Setenv(name, "") // the test sees the default; Setenv restores it
			os.Unsetenv(name)
		}
	}
	if v, set := os.LookupEnv("SHOAL_EXECUTOR_TRIM_IDLE"); set {
		t.Setenv("SHOAL_EXECUTOR_TRIM_IDLE", v)
		os.Unsetenv("SHOAL_EXECUTOR_TRIM_IDLE")
	}
	keep, env := heapKeep(8<<30, 2)
	require.Equal(t, int64(512<<20), keep)
	require.Contains(t, env, "MALLOC_MMAP_MAX_=0")
	require.Contains(t, env, "MALLOC_TOP_PAD_=536870912")
	require.Contains(t, env, "MALLOC_TRIM_THRESHOLD_=536870912")
	require.Contains(t, env, "SHOAL_EXECUTOR_TRIM_IDLE=60")
	require.Contains(t, env, "SHOAL_EXECUTOR_HEAP_KEEP=536870912")
	keep, _ = heapKeep(1<<40, 1)
	require.Equal(t, int64(2<<30), keep, "at most 2 GiB")
	keep, env = heapKeep(1<<30, 4)
	require.Zero(t, keep, "32 MiB each: too little to keep")
	require.Nil(t, env)
	t.Setenv("SHOAL_EXECUTOR_TRIM_IDLE", "0.5")
	_, env = heapKeep(8<<30, 1)
	for _, kv := range env {
		require.False(t, strings.HasPrefix(kv, "SHOAL_EXECUTOR_TRIM_IDLE="), "the worker's own setting goes through: %s", kv)
	}
	t.Setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
	keep, _ = heapKeep(8<<30, 1)
	require.Zero(t, keep, "malloc tunables are the user's too")
	os.Unsetenv("GLIBC_TUNABLES")
	keep, _ = heapKeep(0, 1)
	require.Equal(t, DefaultMemoryLimit/8, keep, "no limit: the default's")
	t.Setenv("MALLOC_ARENA_MAX", "2")
	keep, env = heapKeep(8<<30, 1)
	require.Zero(t, keep)
	require.Nil(t, env, "the user's own malloc settings are left alone")
}
