package shoal

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/shoal-dev/shoal/graph"
)

// Key names a task in a Graph; passing a Key as an argument makes a dependency.
type Key string

// Graph is a task graph under construction. Tasks are added with the untyped Go and Add, or
// with typed functions (Fn1.Call, Map, ...). A Graph is not safe for concurrent use.
type Graph struct {
	tasks []graph.Task
	keys  map[string]bool
	funcs map[string][]byte // pickled Python callables by hash (update_graph's funcs)
	err   error             // the first error met while adding tasks
}

// NewGraph returns an empty graph.
func NewGraph() *Graph { return &Graph{keys: map[string]bool{}} }

// keySalt makes generated keys differ between processes, so that two programs on one cluster
// never name different tasks alike (which the scheduler would refuse as a key conflict).
var keySalt = func() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) >> 24 // 40 bits: ten hex digits
}()

var autoKey atomic.Uint64

const hexDigits = "0123456789abcdef"

// newKey returns prefix-<hex>, unique in this process and, with overwhelming likelihood,
// among processes. The hex token lets the dashboard group the task under prefix.
func newKey(prefix string) string {
	b := make([]byte, 0, len(prefix)+24)
	b = append(b, prefix...)
	b = append(b, '-')
	for shift := 36; shift >= 0; shift -= 4 { // the salt, always ten digits
		b = append(b, hexDigits[keySalt>>shift&0xf])
	}
	b = strconv.AppendUint(b, autoKey.Add(1), 16)
	return string(b)
}

// Go adds a task running the registered Go function fn. key may be "" for a generated one.
// Arguments of type Key (or *Future) are references to other tasks' results; everything else
// must be encodable as msgpack.
func (g *Graph) Go(key, fn string, args ...any) Key {
	if key == "" {
		key = newKey(fn)
	}
	t := graph.Task{Key: key, Kind: graph.KindGo, Func: fn}
	for _, a := range args {
		switch a := a.(type) {
		case Key:
			t.Args = append(t.Args, graph.Ref(string(a)))
		case *Future:
			t.Args = append(t.Args, graph.Ref(a.key))
		default:
			t.Args = append(t.Args, graph.Lit(a))
		}
	}
	return g.Add(t)
}

// Add adds a task as it is (retries, priority, restrictions, resources set by the caller).
func (g *Graph) Add(t graph.Task) Key {
	g.tasks = append(g.tasks, t)
	g.keys[t.Key] = true
	return Key(t.Key)
}

// Len is the number of tasks added.
func (g *Graph) Len() int { return len(g.tasks) }

// Tasks returns the tasks added so far.
func (g *Graph) Tasks() []graph.Task { return g.tasks }

// Err is the first error met while adding typed tasks (an argument that cannot be encoded for
// a Python task, say); Submit returns it without sending anything.
func (g *Graph) Err() error { return g.err }

func (g *Graph) fail(err error) {
	if g.err == nil {
		g.err = err
	}
}

// addFunc records a pickled Python callable under its hash.
func (g *Graph) addFunc(hash string, data []byte) {
	if g.funcs == nil {
		g.funcs = map[string][]byte{}
	}
	g.funcs[hash] = data
}

// checkKey fails the graph when a typed call names a key already in it.
func (g *Graph) checkKey(key string) {
	if g.keys[key] {
		g.fail(fmt.Errorf("shoal: key %q is used twice in one graph", key))
	}
}
