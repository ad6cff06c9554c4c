package wire

import (
	"encoding/binary"
	"fmt"
	"math"
)

// dec reads msgpack values from b. Methods report ok=false on anything unexpected and record
// the first reason (fail); err turns it into a *DecodeError naming the field being decoded.
type dec struct {
	b        []byte
	i        int
	depth    int
	lastFunc string
	// lastGroup is the group of the last task decoded: a graph's tasks come group by group, so
	// consecutive tasks share one string instead of a copy each (and a pooled decoder keeps
	// both from its last message: DecodeHeader)
	lastGroup string
	field     string // the top-level field being decoded, when it is a known one
	rawField  []byte // or its name as sent, when it is not (converted only for an error)
	why       string // the first failure
	// budget, when limited, is how many more bytes the decoded values may take: elements cost
	// their Go size, strings and byte slices their length. An element decoded from one byte
	// (an empty map) can be a 184-byte graph.Task, so counts alone do not bound memory.
	budget  int64
	limited bool
	anyMax  int // nesting allowed in `any` values (default maxDepth)
}

// charge takes n bytes from the budget.
func (d *dec) charge(n int) bool {
	if d.budget -= int64(n); d.budget < 0 && d.limited {
		return d.overBudget()
	}
	return true
}

// The failure paths are kept out of line, so that the fast paths inline.

//go:noinline
func (d *dec) overBudget() bool {
	return d.fail("decodes to more than %d× its %d bytes", budgetFactor, len(d.b))
}

//go:noinline
func (d *dec) truncated() bool { return d.fail("truncated at byte %d", d.i) }

//go:noinline
func (d *dec) wrongType(want string, c byte) bool {
	return d.fail("expected %s, found type byte 0x%02x", want, c)
}

//go:noinline
func (d *dec) tooMany(what string, n, left uint64) bool {
	return d.fail("%s declares %d entries, only %d bytes remain", what, n, left)
}

func (d *dec) fail(format string, args ...any) bool {
	if d.why == "" {
		d.why = fmt.Sprintf(format, args...)
	}
	return false
}

func (d *dec) err() error {
	why := d.why
	if why == "" {
		why = "malformed"
	}
	field := d.field
	if field == "" && d.rawField != nil {
		field = string(d.rawField)
	}
	return &DecodeError{Field: field, Reason: why}
}

// enter counts one level of nesting; the caller decrements d.depth when it leaves.
func (d *dec) enter() bool {
	d.depth++
	if d.depth > maxDepth {
		return d.fail("nested deeper than %d levels", maxDepth)
	}
	return true
}

func (d *dec) peek() (byte, bool) {
	if d.i >= len(d.b) {
		return 0, d.truncated()
	}
	return d.b[d.i], true
}

func (d *dec) isNil() bool {
	if d.i < len(d.b) && d.b[d.i] == 0xc0 {
		d.i++
		return true
	}
	return false
}

// fixed reads the code byte and an n-byte big-endian unsigned integer.
func (d *dec) fixed(n int) (uint64, bool) {
	d.i++
	if len(d.b)-d.i < n {
		return 0, d.truncated()
	}
	p := d.b[d.i : d.i+n]
	d.i += n
	switch n {
	case 1:
		return uint64(p[0]), true
	case 2:
		return uint64(binary.BigEndian.Uint16(p)), true
	case 4:
		return uint64(binary.BigEndian.Uint32(p)), true
	}
	return binary.BigEndian.Uint64(p), true
}

// fits checks a declared count against the bytes left, at least minSize bytes per element.
func (d *dec) fits(n uint64, minSize uint64, what string) bool {
	if left := uint64(len(d.b) - d.i); n > left/minSize {
		return d.tooMany(what, n, left)
	}
	return true
}

func (d *dec) mapLen() (int, bool) {
	c, ok := d.peek()
	if !ok {
		return 0, false
	}
	var n uint64
	switch {
	case c >= 0x80 && c <= 0x8f:
		d.i++
		return int(c & 0x0f), d.fits(uint64(c&0x0f), 2, "a map")
	case c == 0xde:
		n, ok = d.fixed(2)
	case c == 0xdf:
		n, ok = d.fixed(4)
	default:
		return 0, d.wrongType("a map", c)
	}
	return int(n), ok && d.fits(n, 2, "a map") // a key and a value take a byte each at least
}

func (d *dec) arrayLen() (int, bool) {
	c, ok := d.peek()
	if !ok {
		return 0, false
	}
	var n uint64
	switch {
	case c >= 0x90 && c <= 0x9f:
		d.i++
		return int(c & 0x0f), d.fits(uint64(c&0x0f), 1, "an array")
	case c == 0xdc:
		n, ok = d.fixed(2)
	case c == 0xdd:
		n, ok = d.fixed(4)
	default:
		return 0, d.wrongType("an array", c)
	}
	return int(n), ok && d.fits(n, 1, "an array")
}

// rawLen reads the length of a str or bin value (both decode into strings and byte slices).
func (d *dec) rawLen(c byte) (uint64, bool) {
	switch {
	case c >= 0xa0 && c <= 0xbf:
		d.i++
		return uint64(c & 0x1f), true
	case c == 0xd9, c == 0xc4:
		return d.fixed(1)
	case c == 0xda, c == 0xc5:
		return d.fixed(2)
	case c == 0xdb, c == 0xc6:
		return d.fixed(4)
	}
	return 0, d.wrongType("a string", c)
}

// strView returns the bytes of a str (or bin) value without copying them.
func (d *dec) strView() ([]byte, bool) {
	c, ok := d.peek()
	if !ok {
		return nil, false
	}
	n, ok := d.rawLen(c)
	if !ok {
		return nil, false
	}
	if n > uint64(len(d.b)-d.i) {
		return nil, d.tooMany("a string", n, uint64(len(d.b)-d.i))
	}
	v := d.b[d.i : d.i+int(n)]
	d.i += int(n)
	return v, true
}

// strOrNil is strView that also takes nil (as the empty string).
func (d *dec) strOrNil() ([]byte, bool) {
	if d.isNil() {
		return nil, true
	}
	return d.strView()
}

func (d *dec) str(p *string) bool {
	v, ok := d.strOrNil()
	*p = string(v)
	return ok && d.charge(len(v))
}

// strLast decodes a str or nil into *p as str does, but shares *last, the string this decoder
// made last for that field, when the value is the same (a graph's tasks name a few functions
// and groups, in runs), and returns the value's length without charging it.
func (d *dec) strLast(p, last *string) (int, bool) {
	v, ok := d.strOrNil()
	if string(v) != *last {
		*last = string(v)
	}
	*p = *last
	return len(v), ok
}

func (d *dec) strs(p *[]string) bool { return slice(d, p, (*dec).str) }

// bin decodes a bin (or str) value into a new slice; nil stays nil.
func (d *dec) bin(p *[]byte) bool {
	if d.isNil() {
		*p = nil
		return true
	}
	v, ok := d.strView()
	if !ok || !d.charge(len(v)) {
		return false
	}
	*p = append([]byte(nil), v...)
	if *p == nil {
		*p = []byte{}
	}
	return true
}

// integer reads any msgpack integer; neg tells a negative value (v is then its int64 bits).
func (d *dec) integer() (v uint64, neg bool, ok bool) {
	c, ok := d.peek()
	if !ok {
		return 0, false, false
	}
	switch {
	case c <= 0x7f:
		d.i++
		return uint64(c), false, true
	case c >= 0xe0:
		d.i++
		return uint64(int64(int8(c))), true, true
	}
	switch c {
	case 0xc0:
		d.i++
		return 0, false, true
	case 0xcc:
		v, ok = d.fixed(1)
	case 0xcd:
		v, ok = d.fixed(2)
	case 0xce:
		v, ok = d.fixed(4)
	case 0xcf:
		v, ok = d.fixed(8)
	case 0xd0:
		v, ok = d.fixed(1)
		s := int64(int8(v))
		return uint64(s), s < 0, ok
	case 0xd1:
		v, ok = d.fixed(2)
		s := int64(int16(v))
		return uint64(s), s < 0, ok
	case 0xd2:
		v, ok = d.fixed(4)
		s := int64(int32(v))
		return uint64(s), s < 0, ok
	case 0xd3:
		v, ok = d.fixed(8)
		s := int64(v)
		return v, s < 0, ok
	default:
		return 0, false, d.fail("expected an integer, found type byte 0x%02x", c)
	}
	return v, false, ok
}

func (d *dec) int(p *int64) bool {
	v, neg, ok := d.integer()
	if !ok {
		return false
	}
	if !neg && v > math.MaxInt64 {
		return d.fail("integer %d out of range", v)
	}
	*p = int64(v)
	return true
}

func (d *dec) intInt(p *int) bool {
	var v int64
	ok := d.int(&v)
	*p = int(v)
	return ok
}

func (d *dec) uint(p *uint64) bool {
	v, neg, ok := d.integer()
	if !ok {
		return false
	}
	if neg {
		return d.fail("negative value %d where an unsigned integer is expected", int64(v))
	}
	*p = v
	return true
}

func (d *dec) bool(p *bool) bool {
	c, ok := d.peek()
	if !ok {
		return false
	}
	switch c {
	case 0xc0, 0xc2, 0xc3:
		d.i++
		*p = c == 0xc3
		return true
	}
	return d.fail("expected a bool, found type byte 0x%02x", c)
}

// float reads a float of either width, or an integer, as a float64.
func (d *dec) float(p *float64) bool {
	c, ok := d.peek()
	if !ok {
		return false
	}
	switch c {
	case 0xca:
		v, ok := d.fixed(4)
		*p = float64(math.Float32frombits(uint32(v)))
		return ok
	case 0xcb:
		v, ok := d.fixed(8)
		*p = math.Float64frombits(v)
		return ok
	}
	v, neg, ok := d.integer()
	if neg {
		*p = float64(int64(v))
	} else {
		*p = float64(v)
	}
	return ok
}

// any decodes one value of any type (see DecodeAny for the Go types it gives).
func (d *dec) any(p *any, depth int) bool {
	c, ok := d.peek()
	if !ok {
		return false
	}
	switch {
	case c <= 0x7f || c >= 0xe0:
		d.i++
		*p = int8(c)
		return true
	case c >= 0xa0 && c <= 0xbf, c == 0xd9, c == 0xda, c == 0xdb:
		var s string
		ok = d.str(&s)
		*p = s
		return ok
	case c >= 0x90 && c <= 0x9f, c == 0xdc, c == 0xdd:
		return d.anyArray(p, depth)
	case c >= 0x80 && c <= 0x8f, c == 0xde, c == 0xdf:
		return d.anyMap(p, depth)
	}
	switch c {
	case 0xc0:
		d.i++
		*p = nil
		return true
	case 0xc2, 0xc3:
		d.i++
		*p = c == 0xc3
		return true
	case 0xc4, 0xc5, 0xc6:
		var b []byte
		ok = d.bin(&b)
		*p = b
		return ok
	case 0xca:
		v, ok := d.fixed(4)
		*p = math.Float32frombits(uint32(v))
		return ok
	case 0xcb:
		v, ok := d.fixed(8)
		*p = math.Float64frombits(v)
		return ok
	case 0xcc:
		v, ok := d.fixed(1)
		*p = uint8(v)
		return ok
	case 0xcd:
		v, ok := d.fixed(2)
		*p = uint16(v)
		return ok
	case 0xce:
		v, ok := d.fixed(4)
		*p = uint32(v)
		return ok
	case 0xcf:
		v, ok := d.fixed(8)
		*p = v
		return ok
	case 0xd0:
		v, ok := d.fixed(1)
		*p = int8(v)
		return ok
	case 0xd1:
		v, ok := d.fixed(2)
		*p = int16(v)
		return ok
	case 0xd2:
		v, ok := d.fixed(4)
		*p = int32(v)
		return ok
	case 0xd3:
		v, ok := d.fixed(8)
		*p = int64(v)
		return ok
	}
	return d.fail("unsupported msgpack type byte 0x%02x (extension types are not accepted)", c)
}

func (d *dec) anyArray(p *any, depth int) bool {
	if depth >= d.anyLimit() {
		return d.fail("nested deeper than %d levels", d.anyLimit())
	}
	n, ok := d.arrayLen()
	if !ok {
		return false
	}
	out := make([]any, 0, min(n, preallocMax))
	for range n {
		if !d.charge(16) {
			return false
		}
		var v any
		if !d.any(&v, depth+1) {
			return false
		}
		out = append(out, v)
	}
	*p = out
	return true
}

func (d *dec) anyMap(p *any, depth int) bool {
	if depth >= d.anyLimit() {
		return d.fail("nested deeper than %d levels", d.anyLimit())
	}
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	out := make(map[string]any, min(n, preallocMax))
	for range n {
		k, ok := d.strView()
		if !ok {
			return d.fail("a map key is not a string")
		}
		if !d.charge(32 + len(k)) { // the key's string and the entry
			return false
		}
		var v any
		if !d.any(&v, depth+1) {
			return false
		}
		out[string(k)] = v
	}
	*p = out
	return true
}

func (d *dec) anyLimit() int {
	if d.anyMax > 0 {
		return d.anyMax
	}
	return maxDepth
}

// skip moves past one value of any type, within the nesting cap. It is iterative: a counter of
// values still to skip per level replaces recursion, so depth costs no stack.
func (d *dec) skip() bool {
	var pending [maxDepth + 1]uint64 // values left to skip at each open level
	level := 0
	pending[0] = 1
	for {
		for level > 0 && pending[level] == 0 {
			level--
		}
		if pending[level] == 0 {
			return true
		}
		pending[level]--
		c, ok := d.peek()
		if !ok {
			return false
		}
		var n, per uint64 // a container's entries and values per entry
		switch {
		case c >= 0x80 && c <= 0x8f, c == 0xde, c == 0xdf:
			m, ok := d.mapLen()
			if !ok {
				return false
			}
			n, per = uint64(m), 2
		case c >= 0x90 && c <= 0x9f, c == 0xdc, c == 0xdd:
			m, ok := d.arrayLen()
			if !ok {
				return false
			}
			n, per = uint64(m), 1
		default:
			if !d.skipScalar(c) {
				return false
			}
			continue
		}
		if n == 0 {
			continue
		}
		if level+d.depth >= maxDepth {
			return d.fail("nested deeper than %d levels", maxDepth)
		}
		level++
		pending[level] = n * per
	}
}

func (d *dec) skipScalar(c byte) bool {
	var n uint64
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		d.i++
		return true
	case c >= 0xa0 && c <= 0xbf, c == 0xd9, c == 0xda, c == 0xdb, c == 0xc4, c == 0xc5, c == 0xc6:
		_, ok := d.strView()
		return ok
	}
	switch c {
	case 0xca, 0xce, 0xd2:
		n = 5
	case 0xcb, 0xcf, 0xd3:
		n = 9
	case 0xcc, 0xd0:
		n = 2
	case 0xcd, 0xd1:
		n = 3
	case 0xd4:
		n = 3
	case 0xd5:
		n = 4
	case 0xd6:
		n = 6
	case 0xd7:
		n = 10
	case 0xd8:
		n = 18
	case 0xc7, 0xc8, 0xc9:
		w := 1 << (c - 0xc7) // length bytes: 1, 2, 4
		l, ok := d.fixed(w)
		if !ok || l+1 > uint64(len(d.b)-d.i) {
			return d.fail("truncated extension value")
		}
		d.i += int(l) + 1
		return true
	default:
		return d.fail("unknown msgpack type byte 0x%02x", c)
	}
	if n > uint64(len(d.b)-d.i) {
		return d.fail("truncated at byte %d", d.i)
	}
	d.i += int(n)
	return true
}

// Reader reads msgpack values from a buffer, for hand-written decoders of headers outside this
// package (the worker decodes its executor's `done` answers, which carry fields of §3.5 that
// Msg does not have). It has the same bounds as DecodeHeader. Every method reports ok=false,
// never an error, on anything unexpected; Err then says why.
type Reader struct{ d dec }

// NewReader reads from b.
func NewReader(b []byte) *Reader { return &Reader{d: dec{b: b}} }

// MapLen reads a map header.
func (r *Reader) MapLen() (int, bool) { return r.d.mapLen() }

// ArrayLen reads an array header.
func (r *Reader) ArrayLen() (int, bool) { return r.d.arrayLen() }

// Str reads a string.
func (r *Reader) Str() (string, bool) {
	var s string
	ok := r.d.str(&s)
	return s, ok
}

// Key reads a string without copying it: the bytes are the buffer's (a map key to compare).
func (r *Reader) Key() ([]byte, bool) { return r.d.strView() }

// Int reads a signed or unsigned integer that fits an int64.
func (r *Reader) Int() (int64, bool) {
	var v int64
	ok := r.d.int(&v)
	return v, ok
}

// Uint reads a non-negative integer.
func (r *Reader) Uint() (uint64, bool) {
	var v uint64
	ok := r.d.uint(&v)
	return v, ok
}

// Item reads an Item map (key, encoding, nframes, nbytes).
func (r *Reader) Item(it *Item) bool { return r.d.item(it) }

// Skip moves past one value of any type.
func (r *Reader) Skip() bool { return r.d.skip() }

// Pos is the offset in the buffer of the next value.
func (r *Reader) Pos() int { return r.d.i }

// Seek moves back to an offset Pos returned, to read from there again.
func (r *Reader) Seek(pos int) {
	if pos < 0 || pos > len(r.d.b) {
		panic("wire: Reader.Seek out of range")
	}
	r.d.i = pos
}

// Next tells what the next value is, without reading it: 'm' a map, 'a' an array, 's' a
// string, 0 anything else or nothing left.
func (r *Reader) Next() byte {
	if r.d.i >= len(r.d.b) {
		return 0
	}
	switch c := r.d.b[r.d.i]; {
	case c >= 0x80 && c <= 0x8f, c == 0xde, c == 0xdf:
		return 'm'
	case c >= 0x90 && c <= 0x9f, c == 0xdc, c == 0xdd:
		return 'a'
	case c >= 0xa0 && c <= 0xbf, c == 0xd9, c == 0xda, c == 0xdb:
		return 's'
	}
	return 0
}

// Done tells whether the whole buffer has been read.
func (r *Reader) Done() bool { return r.d.i == len(r.d.b) }

// Err says why the last failed call failed.
func (r *Reader) Err() error { return r.d.err() }
