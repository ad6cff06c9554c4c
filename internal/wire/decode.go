package wire

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/mem"
)

// The header decoder. It is the only one: nothing a peer sends reaches a reflective decoder.
// Every count and length it reads is checked against the bytes left in the frame before
// anything is allocated, slices grow as their elements are decoded (never to a declared size),
// nesting is capped at maxDepth, and a malformed header is refused with an error that names
// the field. The field table below is the single list of what a header may hold; a test checks
// it against Msg's msgpack tags (TestFieldTableMatchesMsg).

// maxDepth caps the nesting of maps and arrays inside a header (task literals, unknown fields).
const maxDepth = 32

// maxAnyDepth caps the nesting of a stored msgpack value (DecodeAny): a task's result may be
// more deeply nested than anything in a header.
const maxAnyDepth = 128

// budgetFactor bounds what a header decodes to: at most this many times its size (plus
// budgetBase), counting elements at their Go size (decoding stops with an error beyond).
const (
	budgetFactor = 16
	budgetBase   = 64 << 10
)

// maxAmplification bounds the memory reserved for a slice from its declared count, as a
// multiple of the bytes left in the frame.
const maxAmplification = 8

// preallocMax caps the capacity reserved from a declared count: longer slices grow by append,
// so memory follows the elements that really arrived, not the count a peer declared.
const preallocMax = 256

// DecodeError is a header that could not be decoded; it wraps ErrProtocol and names the field.
type DecodeError struct {
	Field  string // the top-level header field ("" for the header map itself)
	Reason string
}

func (e *DecodeError) Error() string {
	if e.Field == "" {
		return "wire: protocol error: bad header: " + e.Reason
	}
	return fmt.Sprintf("wire: protocol error: bad header field %q: %s", e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrProtocol) hold.
func (e *DecodeError) Unwrap() error { return ErrProtocol }

// DecodeHeader decodes frame 0: a msgpack map with an op and any of Msg's fields.
func DecodeHeader(b []byte) (*Msg, error) {
	m := msgPool.Get().(*Msg)
	d := decPool.Get().(*dec)
	// (a decoder keeps the last function and group it decoded: a worker's computes, a message
	// each, mostly name the ones the message before named)
	defer func() { *d = dec{lastFunc: d.lastFunc, lastGroup: d.lastGroup}; decPool.Put(d) }()
	*d = dec{b: b, limited: true, budget: budgetFactor*int64(len(b)) + budgetBase, lastFunc: d.lastFunc, lastGroup: d.lastGroup}
	if !d.header(m) {
		*m = Msg{}
		msgPool.Put(m)
		return nil, d.err()
	}
	if m.Op == "" {
		*m = Msg{}
		msgPool.Put(m)
		return nil, &DecodeError{Field: "op", Reason: "the header has no op"}
	}
	return m, nil
}

// decPool recycles decoders: the field table's indirect calls make a dec escape to the heap.
var decPool = sync.Pool{New: func() any { return new(dec) }}

func (d *dec) header(m *Msg) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		d.field, d.rawField = "", nil
		k, ok := d.strView()
		if !ok {
			return d.fail("a key is not a string")
		}
		f := fieldIndex(k)
		if f < 0 {
			d.rawField = k
			if !d.skip() { // an unknown field (a newer peer's): ignored, but still bounded
				return false
			}
			continue
		}
		d.field = msgFields[f].name
		if seen&(1<<f) != 0 {
			return d.fail("repeated")
		}
		seen |= 1 << f
		if !msgFields[f].dec(d, m) {
			return d.fail("malformed")
		}
	}
	d.field = ""
	if d.i != len(d.b) {
		return d.fail("%d bytes after the header map", len(d.b)-d.i)
	}
	return true
}

// msgFields lists every header field with its decoder, in Msg's order.
var msgFields = [...]struct {
	name string
	dec  func(d *dec, m *Msg) bool
}{
	{"op", func(d *dec, m *Msg) bool { return d.op(&m.Op) }},
	{"id", func(d *dec, m *Msg) bool { return d.uint(&m.ID) }},
	{"code", func(d *dec, m *Msg) bool { return d.str(&m.Code) }},
	{"message", func(d *dec, m *Msg) bool { return d.str(&m.Message) }},
	{"error", func(d *dec, m *Msg) bool { return ptr(d, &m.Error, (*dec).errorValue, newOf[Error]) }},
	{"client", func(d *dec, m *Msg) bool { return d.int(&m.Client) }},
	{"worker_id", func(d *dec, m *Msg) bool { return d.int(&m.WorkerID) }},
	{"version", func(d *dec, m *Msg) bool { return d.str(&m.Version) }},
	{"dashboard", func(d *dec, m *Msg) bool { return d.str(&m.Dashboard) }},
	{"scheduler", func(d *dec, m *Msg) bool { return d.str(&m.Scheduler) }},
	{"name", func(d *dec, m *Msg) bool { return d.str(&m.Name) }},
	{"data_addr", func(d *dec, m *Msg) bool { return d.str(&m.DataAddr) }},
	{"pid", func(d *dec, m *Msg) bool { return d.intInt(&m.PID) }},
	{"python", func(d *dec, m *Msg) bool { return d.str(&m.Python) }},
	{"reason", func(d *dec, m *Msg) bool { return d.str(&m.Reason) }},
	{"tasks", func(d *dec, m *Msg) bool { return slice(d, &m.Tasks, (*dec).task) }},
	{"funcs", func(d *dec, m *Msg) bool { return strMap(d, &m.Funcs, (*dec).bin) }},
	{"wanted", func(d *dec, m *Msg) bool { return d.strs(&m.Wanted) }},
	{"keys", func(d *dec, m *Msg) bool { return d.strs(&m.Keys) }},
	{"missing", func(d *dec, m *Msg) bool { return d.strs(&m.Missing) }},
	{"key", func(d *dec, m *Msg) bool { return d.str(&m.Key) }},
	{"state", func(d *dec, m *Msg) bool { return d.str(&m.State) }},
	{"worker", func(d *dec, m *Msg) bool { return d.str(&m.Worker) }},
	{"items", func(d *dec, m *Msg) bool { return slice(d, &m.Items, (*dec).item) }},
	{"running", func(d *dec, m *Msg) bool { return d.strs(&m.Running) }},
	{"seceded", func(d *dec, m *Msg) bool { return d.strs(&m.Seceded) }},
	{"who_has", func(d *dec, m *Msg) bool { return strMap(d, &m.WhoHas, (*dec).strs) }},
	{"workers", func(d *dec, m *Msg) bool { return slice(d, &m.Workers, (*dec).workerInfo) }},
	{"task", func(d *dec, m *Msg) bool { return ptr(d, &m.Task, (*dec).task, pooledTask) }},
	{"tid", func(d *dec, m *Msg) bool { return d.uint(&m.TaskID) }},
	{"func", func(d *dec, m *Msg) bool { return d.str(&m.FuncHash) }},
	{"func_data", func(d *dec, m *Msg) bool { return d.bin(&m.FuncData) }},
	{"payload", func(d *dec, m *Msg) bool { return d.bin(&m.Payload) }},
	{"deps", func(d *dec, m *Msg) bool { return slice(d, &m.Deps, (*dec).dep) }},
	{"order", func(d *dec, m *Msg) bool { return d.int(&m.Order) }},
	{"nbytes", func(d *dec, m *Msg) bool { return d.int(&m.NBytes) }},
	{"encoding", func(d *dec, m *Msg) bool { return d.str(&m.Encoding) }},
	{"start", func(d *dec, m *Msg) bool { return d.int(&m.Start) }},
	{"stop", func(d *dec, m *Msg) bool { return d.int(&m.Stop) }},
	{"thread", func(d *dec, m *Msg) bool { return d.intInt(&m.Thread) }},
	{"accepted", func(d *dec, m *Msg) bool { return d.bool(&m.Accepted) }},
	{"keep", func(d *dec, m *Msg) bool { return d.bool(&m.Keep) }},
	{"nthreads", func(d *dec, m *Msg) bool { return d.intInt(&m.NThreads) }},
	{"memory_limit", func(d *dec, m *Msg) bool { return d.int(&m.MemLimit) }},
	{"memory", func(d *dec, m *Msg) bool { return d.int(&m.Memory) }},
	{"spilled", func(d *dec, m *Msg) bool { return d.int(&m.Spilled) }},
	{"executing", func(d *dec, m *Msg) bool { return d.intInt(&m.Executing) }},
	{"ready", func(d *dec, m *Msg) bool { return d.intInt(&m.Ready) }},
	{"cpu", func(d *dec, m *Msg) bool { return d.float(&m.CPU) }},
	{"bytes_sent", func(d *dec, m *Msg) bool { return d.int(&m.BytesSent) }},
	{"bytes_received", func(d *dec, m *Msg) bool { return d.int(&m.BytesRecv) }},
	{"process_memory", func(d *dec, m *Msg) bool { return d.int(&m.ProcMem) }},
	{"interval", func(d *dec, m *Msg) bool { return d.float(&m.Interval) }},
	{"resources", func(d *dec, m *Msg) bool { return strMap(d, &m.Resources, (*dec).float) }},
	{"functions", func(d *dec, m *Msg) bool { return d.strs(&m.Functions) }},
	{"n", func(d *dec, m *Msg) bool { return d.int(&m.N) }},
	{"addrs", func(d *dec, m *Msg) bool { return d.strs(&m.Addrs) }},
	{"work", func(d *dec, m *Msg) bool { return d.float(&m.Work) }},
	{"samples", func(d *dec, m *Msg) bool { return slice(d, &m.Samples, (*dec).profileItem) }},
	{"timeout", func(d *dec, m *Msg) bool { return d.float(&m.Timeout) }},
	{"lease_timeout", func(d *dec, m *Msg) bool { return d.float(&m.LeaseTimeout) }},
}

// fieldIndex finds a header field's position in msgFields (and its bit in the seen mask), or
// -1. It is a perfect hash built from the table at start-up: a map lookup cost a fifth of the
// decoding time of a task_finished header.
func fieldIndex(k []byte) int {
	f := int(fieldSlots[fieldHash(k, fieldSeed)]) - 1
	if f >= 0 && msgFields[f].name == string(k) {
		return f
	}
	return -1
}

const fieldSlotBits = 10

var fieldSlots [1 << fieldSlotBits]uint8 // msgFields index + 1; 0 is an empty slot
var fieldSeed = buildFieldSlots()

func fieldHash(k []byte, seed uint32) uint32 {
	h := seed
	for _, c := range k {
		h = (h ^ uint32(c)) * 16777619
	}
	return (h ^ h>>15) & (1<<fieldSlotBits - 1)
}

// buildFieldSlots finds a seed under which every field name has its own slot.
func buildFieldSlots() uint32 {
	if len(msgFields) > 64 {
		panic("wire: more header fields than the seen mask holds")
	}
next:
	for seed := uint32(2166136261); ; seed++ {
		clear(fieldSlots[:])
		for i, f := range msgFields {
			h := fieldHash([]byte(f.name), seed)
			if fieldSlots[h] != 0 {
				continue next
			}
			fieldSlots[h] = uint8(i + 1)
		}
		return seed
	}
}

// record notes that key k (its bit in seen, 0 for an unknown key) was read, refusing a
// malformed value or a repeated key.
func (d *dec) record(seen *uint64, bit uint64, ok bool, k []byte) bool {
	if !ok {
		return d.fail("bad value for %q", k)
	}
	if *seen&bit != 0 {
		return d.fail("repeated key %q", k)
	}
	*seen |= bit
	return true
}

// task decodes one graph.Task map. Kind and a func name repeated from the previous task share
// one string, so a large graph does not hold a copy of them per task.
func (d *dec) task(t *graph.Task) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		k, ok := d.strView()
		if !ok {
			return d.fail("a map key is not a string")
		}
		var bit uint64
		switch string(k) {
		case "key":
			bit, ok = 1<<0, d.str(&t.Key)
		case "kind":
			var v []byte
			v, ok = d.strOrNil()
			switch string(v) {
			case string(graph.KindGo):
				t.Kind = graph.KindGo
			case string(graph.KindPy):
				t.Kind = graph.KindPy
			default:
				t.Kind = graph.Kind(v)
			}
			bit = 1 << 1
		case "func":
			bit = 1 << 2
			_, ok = d.strLast(&t.Func, &d.lastFunc)
		case "args":
			bit, ok = 1<<3, slice(d, &t.Args, (*dec).arg)
		case "payload":
			bit, ok = 1<<4, d.bin(&t.Payload)
		case "deps":
			bit, ok = 1<<5, d.strs(&t.Deps)
		case "priority":
			bit, ok = 1<<6, d.intInt(&t.Priority)
		case "retries":
			bit, ok = 1<<7, d.intInt(&t.Retries)
		case "resources":
			bit, ok = 1<<8, strMap(d, &t.Resources, (*dec).float)
		case "workers":
			bit, ok = 1<<9, d.strs(&t.Workers)
		case "group":
			var n int
			n, ok = d.strLast(&t.Group, &d.lastGroup)
			bit, ok = 1<<10, ok && d.charge(n)
		default:
			ok = d.skip()
		}
		if !d.record(&seen, bit, ok, k) {
			return false
		}
	}
	return true
}

// arg decodes {"r": key} or {"v": literal}.
func (d *dec) arg(a *graph.Arg) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		k, ok := d.strView()
		if !ok {
			return d.fail("a map key is not a string")
		}
		var bit uint64
		switch string(k) {
		case "r":
			bit, ok = 1, d.str(&a.Ref)
		case "v":
			bit, ok = 2, d.any(&a.Val, 0)
		default:
			ok = d.skip()
		}
		if !d.record(&seen, bit, ok, k) {
			return false
		}
	}
	return true
}

func (d *dec) errorValue(e *Error) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		k, ok := d.strView()
		if !ok {
			return d.fail("a map key is not a string")
		}
		var bit uint64
		switch string(k) {
		case "code":
			bit, ok = 1, d.str(&e.Code)
		case "type":
			bit, ok = 2, d.str(&e.Type)
		case "message":
			bit, ok = 4, d.str(&e.Message)
		case "traceback":
			bit, ok = 8, d.str(&e.Traceback)
		case "exc":
			bit, ok = 16, d.bin(&e.Exc)
		default:
			ok = d.skip()
		}
		if !d.record(&seen, bit, ok, k) {
			return false
		}
	}
	return true
}

func (d *dec) profileItem(it *ProfileItem) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		k, ok := d.strView()
		if !ok {
			return d.fail("a map key is not a string")
		}
		var bit uint64
		switch string(k) {
		case "group":
			bit, ok = 1, d.str(&it.Group)
		case "stack":
			bit, ok = 2, d.str(&it.Stack)
		case "count":
			bit, ok = 4, d.int(&it.Count)
		default:
			ok = d.skip()
		}
		if !d.record(&seen, bit, ok, k) {
			return false
		}
	}
	return true
}

func (d *dec) item(it *Item) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		k, ok := d.strView()
		if !ok {
			return d.fail("a map key is not a string")
		}
		var bit uint64
		switch string(k) {
		case "key":
			bit, ok = 1, d.str(&it.Key)
		case "encoding":
			bit, ok = 2, d.encoding(&it.Encoding)
		case "nframes":
			bit, ok = 4, d.intInt(&it.NFrames)
		case "nbytes":
			bit, ok = 8, d.int(&it.NBytes)
		default:
			ok = d.skip()
		}
		if !d.record(&seen, bit, ok, k) {
			return false
		}
	}
	return true
}

// knownOps are the ops sent once per task or per transfer, and encodings the value encodings
// (every task_finished and every executor answer carries one): decoded without an allocation
// (a worker running a million tasks decoded half a million compute headers, each op a new
// string).
var (
	knownOps  = []string{OpCompute, OpFreeKeys, OpTaskFinished, OpTaskErred, OpGetData, OpData, OpAddKeys, OpHeartbeat}
	encodings = []string{EncMsgpack, EncPickle, EncBytes, EncArrow}
)

// interned reads a str or nil into *p as str does, except that a value among known is that
// string of known, not a new one.
func (d *dec) interned(p *string, known []string) bool {
	v, ok := d.strOrNil()
	*p = ""
	for _, k := range known {
		if string(v) == k {
			*p = k
			break
		}
	}
	if *p == "" && len(v) > 0 {
		*p = string(v)
	}
	return ok && d.charge(len(v))
}

// op reads a message's op (interned: knownOps).
func (d *dec) op(p *string) bool { return d.interned(p, knownOps) }

// encoding reads an item's encoding (interned: encodings).
func (d *dec) encoding(p *string) bool { return d.interned(p, encodings) }

func (d *dec) dep(dp *Dep) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		k, ok := d.strView()
		if !ok {
			return d.fail("a map key is not a string")
		}
		var bit uint64
		switch string(k) {
		case "key":
			bit, ok = 1, d.str(&dp.Key)
		case "who_has":
			bit, ok = 2, d.strs(&dp.WhoHas)
		case "nbytes":
			bit, ok = 4, d.int(&dp.NBytes)
		default:
			ok = d.skip()
		}
		if !d.record(&seen, bit, ok, k) {
			return false
		}
	}
	return true
}

func (d *dec) workerInfo(w *WorkerInfo) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		k, ok := d.strView()
		if !ok {
			return d.fail("a map key is not a string")
		}
		var bit uint64
		switch string(k) {
		case "name":
			bit, ok = 1<<0, d.str(&w.Name)
		case "address":
			bit, ok = 1<<1, d.str(&w.Address)
		case "nthreads":
			bit, ok = 1<<2, d.intInt(&w.NThreads)
		case "memory_limit":
			bit, ok = 1<<3, d.int(&w.MemoryLimit)
		case "memory":
			bit, ok = 1<<4, d.int(&w.Memory)
		case "spilled":
			bit, ok = 1<<5, d.int(&w.Spilled)
		case "executing":
			bit, ok = 1<<6, d.intInt(&w.Executing)
		case "ready":
			bit, ok = 1<<7, d.intInt(&w.Ready)
		case "cpu":
			bit, ok = 1<<8, d.float(&w.CPU)
		case "bytes_sent":
			bit, ok = 1<<9, d.int(&w.BytesSent)
		case "bytes_received":
			bit, ok = 1<<10, d.int(&w.BytesRecv)
		case "resources":
			bit, ok = 1<<11, strMap(d, &w.Resources, (*dec).float)
		case "last_seen":
			bit, ok = 1<<12, d.float(&w.LastSeen)
		case "pid":
			bit, ok = 1<<13, d.intInt(&w.PID)
		case "process_memory":
			bit, ok = 1<<14, d.int(&w.ProcessMemory)
		default:
			ok = d.skip()
		}
		if !d.record(&seen, bit, ok, k) {
			return false
		}
	}
	return true
}

// slice decodes an array (or nil) of elements; its capacity follows the elements decoded.
func slice[T any](d *dec, p *[]T, elem func(*dec, *T) bool) bool {
	if d.isNil() {
		*p = nil
		return true
	}
	n, ok := d.arrayLen()
	if !ok {
		return false
	}
	if !d.enter() {
		return false
	}
	out := make([]T, 0, capFor[T](n, len(d.b)-d.i))
	// decoding in place writes pointer fields, whose write barrier reads first: each page is
	// made writable as elements reach it (mem.Fresh), and only those the elements reach
	pages := mem.TrackPages(out)
	var zero T
	size := int(unsafe.Sizeof(zero))
	for i := range n {
		if !d.charge(size) {
			return false
		}
		pages.Before(i)
		out = append(out, zero) // decoded in place: no copy of each element, no escape
		if !elem(d, &out[i]) {
			return false
		}
	}
	d.depth--
	*p = out
	return true
}

// capFor is the capacity reserved for a declared count of n elements with left bytes of input
// remaining: all n when that costs at most maxAmplification times the bytes left, else what
// those bytes pay for (append grows the slice if more elements really arrive).
func capFor[T any](n, left int) int {
	var zero T
	size := max(int(unsafe.Sizeof(zero)), 1)
	return min(n, max(preallocMax, left*maxAmplification/size))
}

// strMap decodes a map (or nil) with string keys.
func strMap[V any](d *dec, p *map[string]V, val func(*dec, *V) bool) bool {
	if d.isNil() {
		*p = nil
		return true
	}
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	if !d.enter() {
		return false
	}
	out := make(map[string]V, min(n, preallocMax))
	var zero V
	for range n {
		if !d.charge(16 + int(unsafe.Sizeof(zero))) { // a map entry: its key's header and its value
			return false
		}
		var k string
		if !d.str(&k) {
			return false
		}
		var v V
		if !val(d, &v) {
			return false
		}
		out[k] = v
	}
	d.depth--
	*p = out
	return true
}

func newOf[T any]() *T { return new(T) }

// pooledTask gives a compute's task a Task from taskPool: a worker decodes one per task it
// runs, copies it, and gives it back (ReleaseTask); it was 7 % of a worker's CPU on the
// million-task graph as a fresh allocation each.
func pooledTask() *graph.Task { return taskPool.Get().(*graph.Task) }

// ptr decodes nil as a nil pointer, anything else into the T that get returns (a zero one:
// newOf, or a pooled one).
func ptr[T any](d *dec, p **T, val func(*dec, *T) bool, get func() *T) bool {
	if d.isNil() {
		*p = nil
		return true
	}
	if !d.enter() {
		return false
	}
	if !d.charge(int(unsafe.Sizeof(*new(T)))) {
		return false
	}
	v := get()
	if !val(d, v) {
		return false
	}
	d.depth--
	*p = v
	return true
}

// DecodeAny decodes one msgpack value (a stored msgpack result, say) with the Go types that
// msgpack.Unmarshal into an `any` gives: nil, bool, the exact integer width of the encoding,
// float32/float64, string, []byte, []any and map[string]any. It is bounded like DecodeHeader:
// counts are checked against the bytes present, nesting is capped, trailing bytes refused.
func DecodeAny(b []byte) (any, error) {
	d := dec{b: b, field: "value", anyMax: maxAnyDepth, limited: true, budget: budgetFactor*int64(len(b)) + budgetBase}
	var v any
	if !d.any(&v, 0) {
		return nil, d.err()
	}
	if d.i != len(d.b) {
		return nil, &DecodeError{Field: "value", Reason: fmt.Sprintf("%d bytes after the value", len(d.b)-d.i)}
	}
	return v, nil
}

// ValidateMsgpack checks that b holds exactly one msgpack value whose counts fit in b and
// whose nesting stays within the cap: after it, a reflective decoder can allocate no more
// than a small multiple of len(b). Used before decoding a header's extension fields.
func ValidateMsgpack(b []byte) error {
	d := dec{b: b}
	if !d.skip() {
		return d.err()
	}
	if d.i != len(d.b) {
		return &DecodeError{Reason: fmt.Sprintf("%d bytes after the value", len(d.b)-d.i)}
	}
	return nil
}

// maxExtHeader bounds a header whose extension fields (fields Msg does not have, such as a
// worker's segment placements) are decoded reflectively by UnmarshalExt.
const maxExtHeader = 1 << 20

// UnmarshalExt decodes b, a header's extension field (RawField) or a small header, into v with
// msgpack's reflective decoder, after checking what that decoder cannot be trusted with: b is
// at most 1 MiB, and every count fits in its bytes and nesting stays within the cap
// (ValidateMsgpack), so what it allocates is bounded by a small multiple of those bytes.
func UnmarshalExt(b []byte, v any) error {
	if len(b) > maxExtHeader {
		return &DecodeError{Reason: fmt.Sprintf("a header with extension fields of %d bytes (limit %d)", len(b), maxExtHeader)}
	}
	if err := ValidateMsgpack(b); err != nil {
		return err
	}
	if err := msgpack.Unmarshal(b, v); err != nil {
		return &DecodeError{Reason: err.Error()}
	}
	return nil
}

// HeaderFields lists the fields a header may hold (docs/protocol.md), in Msg's order.
func HeaderFields() []string {
	out := make([]string, len(msgFields))
	for i, f := range msgFields {
		out[i] = f.name
	}
	return out
}

// RawField returns the encoded value of the top-level field name of header b (a msgpack map),
// without decoding the rest: a header's extension fields are read one at a time, so that
// neither their cost nor their bound depends on the rest of the header. ok is false when b
// has no such field; err says why b is malformed.
func RawField(b []byte, name string) (raw []byte, ok bool, err error) {
	d := dec{b: b}
	n, good := d.mapLen()
	if !good {
		return nil, false, d.err()
	}
	for range n {
		k, good := d.strView()
		if !good {
			return nil, false, d.err()
		}
		start := d.i
		if !d.skip() {
			d.field = name
			return nil, false, d.err()
		}
		if string(k) == name {
			return b[start:d.i], true, nil
		}
	}
	return nil, false, nil
}
