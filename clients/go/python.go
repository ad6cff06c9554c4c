package shoal

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"

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

// marshalSorted encodes v as msgpack with the entries of every Go map in order of their keys,
// at any depth (inside slices, pointers, interfaces, other maps and struct fields): a Go map
// has no order, and the Python function receives a dict, whose order it may use
// (pyarrow.table's columns), so the same literal must always arrive the same (CI saw a table's
// columns swap). A struct keeps the order of its fields, as msgpack writes it. The encoder
// sorts map[string]any; ordered turns the other maps into it, or, for keys that are not
// strings, into sortedEntries.
func marshalSorted(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(ordered(reflect.ValueOf(v))); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ordered returns v with every map inside it in a form the encoder writes in key order.
// Anything without a map inside is returned as it is.
func ordered(v reflect.Value) any {
	if !v.IsValid() {
		return nil
	}
	switch v.Kind() {
	case reflect.Interface, reflect.Pointer:
		if v.IsNil() || v.Kind() == reflect.Pointer && !nests(v.Elem().Type()) {
			return v.Interface()
		}
		return ordered(v.Elem())
	case reflect.Map:
		if v.IsNil() {
			return v.Interface()
		}
		if v.Type().Key().Kind() == reflect.String {
			m := make(map[string]any, v.Len())
			for it := v.MapRange(); it.Next(); {
				m[it.Key().String()] = ordered(it.Value())
			}
			return m
		}
		out := make(sortedEntries, 0, v.Len())
		for it := v.MapRange(); it.Next(); {
			k, err := msgpack.Marshal(it.Key().Interface())
			if err != nil {
				return v.Interface() // the encoder reports it
			}
			out = append(out, entry{msgpack.RawMessage(k), ordered(it.Value())})
		}
		slices.SortFunc(out, func(a, b entry) int {
			return bytes.Compare(a.key.(msgpack.RawMessage), b.key.(msgpack.RawMessage))
		})
		return out
	case reflect.Slice, reflect.Array:
		if !nests(v.Type().Elem()) || (v.Kind() == reflect.Slice && v.IsNil()) {
			return v.Interface()
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = ordered(v.Index(i))
		}
		return out
	case reflect.Struct:
		if nests(v.Type()) {
			return orderedStruct(v)
		}
	}
	return v.Interface()
}

// orderedStruct returns a struct's entries as msgpack writes them (its fields in order, with
// their tags' names and options), each field's value ordered. A struct msgpack writes as
// something else than a map of named fields (as_array, a custom encoder) is returned as it is.
func orderedStruct(v reflect.Value) any {
	if t := v.Type(); t.Implements(customEncoder) || reflect.PointerTo(t).Implements(customEncoder) ||
		t.Implements(marshaler) || reflect.PointerTo(t).Implements(marshaler) {
		return v.Interface() // it writes itself
	}
	b, err := msgpack.Marshal(v.Interface())
	if err != nil {
		return v.Interface() // the encoder reports it
	}
	r := wire.NewReader(b)
	if r.Next() != 'm' {
		return v.Interface()
	}
	n, ok := r.MapLen()
	if !ok {
		return v.Interface()
	}
	out := make(sortedEntries, 0, n)
	for range n {
		if r.Next() != 's' {
			return v.Interface()
		}
		name, _ := r.Str()
		at := r.Pos()
		if !r.Skip() {
			return v.Interface()
		}
		var val any = msgpack.RawMessage(b[at:r.Pos()])
		if f, ok := msgpackField(v, name); ok {
			val = ordered(f)
		}
		out = append(out, entry{name, val})
	}
	return out
}

// msgpackField finds the field msgpack writes under name (its "msgpack" tag's name, else its
// own), looking into embedded structs, which msgpack writes inline.
func msgpackField(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		tag, _, _ := strings.Cut(sf.Tag.Get("msgpack"), ",")
		if tag == "-" || !sf.IsExported() && !sf.Anonymous {
			continue
		}
		f := v.Field(i)
		if sf.Anonymous && tag == "" {
			if f.Kind() == reflect.Pointer {
				if f.IsNil() {
					continue
				}
				f = f.Elem()
			}
			if f.Kind() == reflect.Struct {
				if g, ok := msgpackField(f, name); ok {
					return g, true
				}
				continue
			}
		}
		if tag == "" {
			tag = sf.Name
		}
		if tag == name && sf.IsExported() {
			return f, true
		}
	}
	return reflect.Value{}, false
}

var (
	customEncoder = reflect.TypeFor[msgpack.CustomEncoder]()
	marshaler     = reflect.TypeFor[msgpack.Marshaler]()
)

// entry is one key and value of sortedEntries.
type entry struct{ key, val any }

// sortedEntries is a map written with its entries in the order given.
type sortedEntries []entry

func (s sortedEntries) EncodeMsgpack(enc *msgpack.Encoder) error {
	if err := enc.EncodeMapLen(len(s)); err != nil {
		return err
	}
	for _, e := range s {
		if err := enc.Encode(e.key); err != nil {
			return err
		}
		if err := enc.Encode(e.val); err != nil {
			return err
		}
	}
	return nil
}

// nests reports whether values of type t may hold a map (so ordered must look inside). The
// answer is kept by type: ordered asks it for every element of a slice of structs.
func nests(t reflect.Type) bool {
	if v, ok := nestsByType.Load(t); ok {
		return v.(bool)
	}
	v := nestsSeen(t, map[reflect.Type]bool{})
	nestsByType.Store(t, v)
	return v
}

var nestsByType sync.Map // reflect.Type → bool

func nestsSeen(t reflect.Type, seen map[reflect.Type]bool) bool {
	switch t.Kind() {
	case reflect.Map, reflect.Interface:
		return true
	case reflect.Slice, reflect.Array, reflect.Pointer:
		return nestsSeen(t.Elem(), seen)
	case reflect.Struct:
		if seen[t] {
			return false // a recursive type: its other fields decide
		}
		seen[t] = true
		for i := range t.NumField() {
			if nestsSeen(t.Field(i).Type, seen) {
				return true
			}
		}
	}
	return false
}
