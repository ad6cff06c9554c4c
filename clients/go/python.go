package shoal

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Python tasks from Go. A py task names its callable by the SHA-256 of its pickle and carries
// its arguments as a pickled (args, kwargs) (docs/protocol.md §3.1). Go writes these pickles
// itself, without Python: the callable is a reference to a module attribute (what pickle
// writes for any importable function), each reference to another key is
// shoal._refs.Ref(key), and each literal is msgpack.unpackb(<its msgpack bytes>), so a Python
// function receives a literal exactly as it would receive a stored msgpack value.

// Python0 declares a Python function of no arguments, named "module.function" or
// "module:qualified.name", importable by the workers' Python executors (shoal worker
// --python). Its result must be something Go can read: None, bool, int, float or str
// (stored as msgpack), bytes, or a pyarrow Table / pandas DataFrame (Arrow); anything else is
// pickled and can only be read from Python.
func Python0[R any](name string) *Fn0[R] { return &Fn0[R]{pyDesc(name)} }

// Python declares a Python function of one argument. See Python0.
func Python[A, R any](name string) *Fn1[A, R] { return &Fn1[A, R]{pyDesc(name)} }

// Python2 declares a Python function of two arguments. See Python0.
func Python2[A, B, R any](name string) *Fn2[A, B, R] { return &Fn2[A, B, R]{pyDesc(name)} }

// Python3 declares a Python function of three arguments. See Python0.
func Python3[A, B, C, R any](name string) *Fn3[A, B, C, R] { return &Fn3[A, B, C, R]{pyDesc(name)} }

func pyDesc(name string) fnDesc {
	module, qual, ok := strings.Cut(name, ":")
	if !ok {
		i := strings.LastIndexByte(name, '.')
		if i <= 0 || i == len(name)-1 {
			panic(fmt.Sprintf("shoal: Python function %q: want module.function or module:qualified.name", name))
		}
		module, qual = name[:i], name[i+1:]
	}
	if module == "" || qual == "" {
		panic(fmt.Sprintf("shoal: Python function %q: want module.function or module:qualified.name", name))
	}
	var p pickler
	p.proto()
	p.global(module, qual)
	p.op(opStop)
	sum := sha256.Sum256(p.b)
	short := qual[strings.LastIndexByte(qual, '.')+1:]
	return fnDesc{name: module + ":" + qual, kind: graph.KindPy, prefix: short, hash: hex.EncodeToString(sum[:]), data: p.b}
}

// pyTask fills in a py task: the function's hash, the pickled arguments and the dependencies.
func (g *Graph) pyTask(t *graph.Task, d *fnDesc, specs []argSpec) {
	t.Func = d.hash
	g.addFunc(d.hash, d.data)
	var p pickler
	p.proto()
	p.op(opMark)
	for i := range specs {
		s := &specs[i]
		switch s.kind {
		case argRef:
			p.ref(s.ref)
			t.Deps = appendDep(t.Deps, s.ref)
		case argGroup:
			p.op(opEmptyList)
			p.op(opMark)
			for _, k := range s.refs {
				p.ref(k)
				t.Deps = appendDep(t.Deps, k)
			}
			p.op(opAppends)
		case argLit:
			b, err := marshalSorted(s.lit)
			if err != nil {
				g.fail(fmt.Errorf("shoal: argument %d of %s cannot be encoded: %w", i, d.name, err))
				return
			}
			p.global("msgpack", "unpackb")
			p.bytes(b)
			p.op(opTuple1)
			p.op(opReduce)
		}
	}
	p.op(opTuple)
	p.op(opEmptyDict)
	p.op(opTuple2)
	p.op(opStop)
	t.Payload = p.b
}

func appendDep(deps []string, k string) []string {
	for _, d := range deps {
		if d == k {
			return deps
		}
	}
	return append(deps, k)
}

// Pickle opcodes (Lib/pickletools.py), protocol 4.
const (
	opProto     = 0x80
	opMark      = '('
	opStop      = '.'
	opTuple     = 't'
	opTuple1    = 0x85
	opTuple2    = 0x86
	opEmptyDict = '}'
	opEmptyList = ']'
	opAppends   = 'e'
	opReduce    = 'R'
	opGlobal    = 0x93 // STACK_GLOBAL
	opShortStr  = 0x8c // SHORT_BINUNICODE
	opStr       = 'X'  // BINUNICODE
	opShortByte = 'C'  // SHORT_BINBYTES
	opBytes     = 'B'  // BINBYTES
)

// pickler writes the few pickle opcodes a Go-made task needs.
type pickler struct{ b []byte }

func (p *pickler) op(c byte) { p.b = append(p.b, c) }
func (p *pickler) proto()    { p.b = append(p.b, opProto, 4) }

func (p *pickler) str(s string) {
	if len(s) < 256 {
		p.b = append(p.b, opShortStr, byte(len(s)))
	} else {
		p.b = append(p.b, opStr)
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(s)))
	}
	p.b = append(p.b, s...)
}

func (p *pickler) bytes(b []byte) {
	if len(b) < 256 {
		p.b = append(p.b, opShortByte, byte(len(b)))
	} else {
		p.b = append(p.b, opBytes)
		p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(b)))
	}
	p.b = append(p.b, b...)
}

// global pushes module.qual (a dotted qual is looked up attribute by attribute).
func (p *pickler) global(module, qual string) {
	p.str(module)
	p.str(qual)
	p.op(opGlobal)
}

// ref pushes shoal._refs.Ref(key), which the executor replaces by the key's value.
func (p *pickler) ref(key string) {
	p.global("shoal._refs", "Ref")
	p.str(key)
	p.op(opTuple1)
	p.op(opReduce)
}

// marshalSorted encodes v as msgpack with every map's entries in order of their keys, at any
// depth (inside slices, structs, other maps): a Go map has no order, and the Python function
// receives a dict, whose order it may use (pyarrow.table's columns), so the same literal must
// always arrive the same (CI saw a table's columns swap). String keys sort by their text, and
// come before keys of other types, which sort by their encoding.
func marshalSorted(v any) ([]byte, error) {
	b, err := msgpack.Marshal(v)
	if err != nil {
		return nil, err
	}
	r := wire.NewReader(b)
	out, ok := sortedMaps(make([]byte, 0, len(b)), r, b)
	if !ok || !r.Done() {
		return nil, fmt.Errorf("re-reading its encoding: %v", r.Err())
	}
	return out, nil
}

// sortedMaps appends the value r is at (in b) to out, its maps' entries sorted.
func sortedMaps(out []byte, r *wire.Reader, b []byte) ([]byte, bool) {
	start := r.Pos()
	switch r.Next() {
	case 'a':
		n, ok := r.ArrayLen()
		out = append(out, b[start:r.Pos()]...)
		for ; ok && n > 0; n-- {
			out, ok = sortedMaps(out, r, b)
		}
		return out, ok
	case 'm':
		n, ok := r.MapLen()
		if !ok {
			return out, false
		}
		out = append(out, b[start:r.Pos()]...)
		type entry struct {
			text string // the key's text when it is a string
			str  bool
			kv   []byte // the key and the value, encoded
		}
		entries := make([]entry, 0, n)
		for range n {
			var e entry
			if r.Next() == 's' {
				at := r.Pos()
				if e.text, ok = r.Str(); !ok {
					return out, false
				}
				e.str = true
				e.kv = append(e.kv, b[at:r.Pos()]...)
			} else if e.kv, ok = sortedMaps(nil, r, b); !ok {
				return out, false
			}
			if e.kv, ok = sortedMaps(e.kv, r, b); !ok {
				return out, false
			}
			entries = append(entries, e)
		}
		slices.SortStableFunc(entries, func(x, y entry) int {
			switch {
			case x.str && y.str:
				return strings.Compare(x.text, y.text)
			case x.str != y.str:
				if x.str {
					return -1
				}
				return 1
			}
			return bytes.Compare(x.kv, y.kv)
		})
		for _, e := range entries {
			out = append(out, e.kv...)
		}
		return out, true
	}
	ok := r.Skip()
	return append(out, b[start:r.Pos()]...), ok
}
