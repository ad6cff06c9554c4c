package arrowio

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// arrow-go trusts the lengths inside IPC metadata: a vector length read
// from a corrupt flatbuffer goes straight into make(), and a corrupt
// uncompressed-size prefix straight into an allocation, so garbage can
// exhaust memory before any bounds check panics. verifyMessage checks the
// metadata flatbuffer structurally (every table, string and vector the
// reader will touch lies inside the buffer), and checkCompressed bounds
// what a compressed body may expand to, before arrow-go sees either.

// Field slots (vtable offsets) of the Arrow flatbuffers schema, Message.fbs
// and Schema.fbs.
const (
	slotMessageHeaderType = 6
	slotMessageHeader     = 8
	slotMessageCustomMeta = 12

	slotSchemaFields     = 6
	slotSchemaCustomMeta = 8
	slotSchemaFeatures   = 10

	slotFieldName       = 4
	slotFieldTypeType   = 8
	slotFieldType       = 10
	slotFieldDictionary = 12
	slotFieldChildren   = 14
	slotFieldCustomMeta = 16

	slotKeyValueKey   = 4
	slotKeyValueValue = 6

	slotDictEncIndexType = 6

	slotBatchNodes       = 6
	slotBatchBuffers     = 8
	slotBatchCompression = 10
	slotBatchVariadic    = 12

	slotDictBatchData = 6

	slotTimestampTimezone = 6
	slotUnionTypeIDs      = 6
)

// Union tags of the flatbuffers schema.
const (
	headerSchema          = 1
	headerDictionaryBatch = 2
	headerRecordBatch     = 3
	typeTimestamp         = 10
	typeUnion             = 14
)

const (
	// maxFieldDepth bounds nested types, as arrow-go's reader does.
	maxFieldDepth = 64
	// minExpansionLimit and expansionFactor bound the declared
	// uncompressed size of a compressed batch: at most
	// max(minExpansionLimit, expansionFactor × compressed body length).
	minExpansionLimit = 1 << 20
	expansionFactor   = 256
)

var errFlatbuffer = errors.New("malformed metadata flatbuffer")

// msgInfo is what verifyMessage learns about a message.
type msgInfo struct {
	header     uint8
	compressed bool
	buffers    int // position of the buffers vector of the batch, 0 if none
}

type verifier struct {
	b      []byte
	budget int // tables left to visit; bounds work on shared sub-tables
}

// verifyMessage checks the flatbuffer of one IPC message's metadata.
func verifyMessage(b []byte) (info msgInfo, err error) {
	v := &verifier{b: b, budget: len(b)/4 + 16}
	defer func() {
		if p := recover(); p != nil {
			info, err = msgInfo{}, fmt.Errorf("%w: %v", errFlatbuffer, p)
		}
	}()
	if len(b) < 4 {
		return info, errFlatbuffer
	}
	msg := v.table(int(v.u32(0)))
	info.header = v.u8field(msg, slotMessageHeaderType)
	v.keyValues(msg, slotMessageCustomMeta)
	header, ok := v.ref(msg, slotMessageHeader)
	if !ok {
		return info, nil
	}
	header = v.table(header)
	switch info.header {
	case headerSchema:
		v.schema(header)
	case headerRecordBatch:
		info.compressed, info.buffers = v.recordBatch(header)
	case headerDictionaryBatch:
		if data, ok := v.ref(header, slotDictBatchData); ok {
			info.compressed, info.buffers = v.recordBatch(v.table(data))
		}
	}
	return info, nil
}

func (v *verifier) schema(t int) {
	v.tables(t, slotSchemaFields, func(f int) { v.field(f, 0) })
	v.keyValues(t, slotSchemaCustomMeta)
	v.vector(t, slotSchemaFeatures, 8)
}

func (v *verifier) field(t, depth int) {
	if depth > maxFieldDepth {
		panic("type nesting too deep")
	}
	v.str(t, slotFieldName)
	if typ, ok := v.ref(t, slotFieldType); ok {
		typ = v.table(typ)
		switch v.u8field(t, slotFieldTypeType) {
		case typeTimestamp:
			v.str(typ, slotTimestampTimezone)
		case typeUnion:
			v.vector(typ, slotUnionTypeIDs, 4)
		}
	}
	if dict, ok := v.ref(t, slotFieldDictionary); ok {
		dict = v.table(dict)
		if idx, ok := v.ref(dict, slotDictEncIndexType); ok {
			v.table(idx)
		}
	}
	v.tables(t, slotFieldChildren, func(c int) { v.field(c, depth+1) })
	v.keyValues(t, slotFieldCustomMeta)
}

// recordBatch checks a RecordBatch table and reports whether it is
// compressed and where its buffers vector is.
func (v *verifier) recordBatch(t int) (compressed bool, buffers int) {
	v.vector(t, slotBatchNodes, 16)
	buffers, _ = v.vector(t, slotBatchBuffers, 16)
	v.vector(t, slotBatchVariadic, 8)
	if c, ok := v.ref(t, slotBatchCompression); ok {
		v.table(c)
		compressed = true
	}
	return compressed, buffers
}

func (v *verifier) keyValues(t, slot int) {
	v.tables(t, slot, func(kv int) {
		v.str(kv, slotKeyValueKey)
		v.str(kv, slotKeyValueValue)
	})
}

// table checks the table at pos and its vtable, and returns pos.
func (v *verifier) table(pos int) int {
	if v.budget--; v.budget < 0 {
		panic("too many tables")
	}
	vt := pos - int(int32(v.u32(pos)))
	vtSize, tSize := int(v.u16(vt)), int(v.u16(vt+2))
	if vtSize < 4 || vtSize%2 != 0 || vt+vtSize > len(v.b) || tSize < 4 || pos+tSize > len(v.b) {
		panic(fmt.Sprintf("bad vtable at %d for table at %d", vt, pos))
	}
	for f := 4; f < vtSize; f += 2 {
		if off := int(v.u16(vt + f)); off != 0 && off+1 > tSize {
			panic(fmt.Sprintf("field at %d outside table at %d", off, pos))
		}
	}
	return pos
}

// fieldPos returns the position of a table's field, or 0 if absent.
func (v *verifier) fieldPos(t, slot int) int {
	vt := t - int(int32(v.u32(t)))
	if slot >= int(v.u16(vt)) {
		return 0
	}
	if off := int(v.u16(vt + slot)); off != 0 {
		return t + off
	}
	return 0
}

func (v *verifier) u8field(t, slot int) uint8 {
	if p := v.fieldPos(t, slot); p != 0 {
		return v.b[p]
	}
	return 0
}

// ref follows an offset field to the position it points at.
func (v *verifier) ref(t, slot int) (int, bool) {
	p := v.fieldPos(t, slot)
	if p == 0 {
		return 0, false
	}
	target := p + int(v.u32(p))
	if target >= len(v.b) {
		panic(fmt.Sprintf("offset at %d points outside the buffer", p))
	}
	return target, true
}

// vector checks a vector of n elements of size bytes and returns its
// position (of the length word) and length.
func (v *verifier) vector(t, slot, size int) (int, int) {
	pos, ok := v.ref(t, slot)
	if !ok {
		return 0, 0
	}
	n := int(v.u32(pos))
	if n > (len(v.b)-pos-4)/size {
		panic(fmt.Sprintf("vector of %d elements at %d exceeds the buffer", n, pos))
	}
	return pos, n
}

func (v *verifier) str(t, slot int) {
	v.vector(t, slot, 1)
}

// tables checks a vector of tables, calling each on every element.
func (v *verifier) tables(t, slot int, each func(int)) {
	pos, n := v.vector(t, slot, 4)
	for i := range n {
		elem := pos + 4 + 4*i
		each(v.table(elem + int(v.u32(elem))))
	}
}

func (v *verifier) u16(p int) uint16 {
	if p < 0 || p+2 > len(v.b) {
		panic(fmt.Sprintf("read at %d outside the buffer", p))
	}
	return binary.LittleEndian.Uint16(v.b[p:])
}

func (v *verifier) u32(p int) uint32 {
	if p < 0 || p+4 > len(v.b) {
		panic(fmt.Sprintf("read at %d outside the buffer", p))
	}
	return binary.LittleEndian.Uint32(v.b[p:])
}

// checkCompressed bounds the declared uncompressed sizes of a compressed
// batch's buffers (each buffer's first 8 body bytes, -1 meaning stored
// uncompressed).
func checkCompressed(meta []byte, info msgInfo, body []byte) error {
	if !info.compressed || info.buffers == 0 {
		return nil
	}
	limit := max(int64(minExpansionLimit), expansionFactor*int64(len(body)))
	n := int(binary.LittleEndian.Uint32(meta[info.buffers:]))
	var total int64
	for i := range n {
		entry := meta[info.buffers+4+16*i:]
		off, length := int64(binary.LittleEndian.Uint64(entry)), int64(binary.LittleEndian.Uint64(entry[8:]))
		if length == 0 {
			continue
		}
		if off < 0 || length < 8 || off > int64(len(body))-length {
			return fmt.Errorf("compressed buffer %d (offset %d, length %d) outside the %d-byte body", i, off, length, len(body))
		}
		size := int64(binary.LittleEndian.Uint64(body[off:]))
		if size == -1 {
			continue
		}
		if total += size; size < 0 || total > limit {
			return fmt.Errorf("compressed batch declares %d uncompressed bytes, more than the %d allowed for a %d-byte body", total, limit, len(body))
		}
	}
	return nil
}
