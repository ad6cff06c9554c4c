package wire

import (
	"encoding/binary"
	"math"

	"github.com/shoal-dev/shoal/graph"
	"github.com/vmihailenco/msgpack/v5"
)

// decodeHeaderFast decodes a header without reflection, mirroring what msgpack.Unmarshal(b,
// &Msg{}) produces. It handles the encodings that the Go encoder (encode.go) and Python's
// msgpack (use_bin_type=True) write; on anything else — a truncated or malformed frame, a
// repeated key, a nil where a scalar is expected, an unusual integer width for a float, the
// rare info_reply workers list — it reports ok=false and DecodeHeader falls back to the
// reflective decoder, which then gives the authoritative result or error. A test checks both
// decoders agree (TestFastDecoderMatchesReflection, FuzzDecodeHeader).
func decodeHeaderFast(b []byte, m *Msg) (ok bool) {
	d := dec{b: b}
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint64
	for range n {
		k, ok := d.strView()
		if !ok {
			return false
		}
		bit, ok := msgField(k)
		if !ok {
			if !d.skip(0) { // not a field of Msg: the reflective decoder ignores it too
				return false
			}
			continue
		}
		if seen&(1<<bit) != 0 {
			return false
		}
		seen |= 1 << bit
		if !d.msgValue(bit, m) {
			return false
		}
	}
	return d.i == len(d.b)
}

// field numbers of Msg, in struct order; the seen bitmask rejects repeated keys.
const (
	fOp = iota
	fID
	fCode
	fMessage
	fError
	fClient
	fWorkerID
	fVersion
	fDashboard
	fScheduler
	fName
	fDataAddr
	fPID
	fPython
	fReason
	fTasks
	fFuncs
	fWanted
	fKeys
	fMissing
	fKey
	fState
	fWorker
	fItems
	fWhoHas
	fWorkers
	fTask
	fTaskID
	fFuncHash
	fFuncData
	fPayload
	fDeps
	fOrder
	fNBytes
	fEncoding
	fStart
	fStop
	fThread
	fAccepted
	fNThreads
	fMemLimit
	fMemory
	fSpilled
	fExecuting
	fReady
	fCPU
	fBytesSent
	fBytesRecv
	fResources
	fFunctions
)

func msgField(k []byte) (int, bool) {
	switch string(k) {
	case "op":
		return fOp, true
	case "id":
		return fID, true
	case "code":
		return fCode, true
	case "message":
		return fMessage, true
	case "error":
		return fError, true
	case "client":
		return fClient, true
	case "worker_id":
		return fWorkerID, true
	case "version":
		return fVersion, true
	case "dashboard":
		return fDashboard, true
	case "scheduler":
		return fScheduler, true
	case "name":
		return fName, true
	case "data_addr":
		return fDataAddr, true
	case "pid":
		return fPID, true
	case "python":
		return fPython, true
	case "reason":
		return fReason, true
	case "tasks":
		return fTasks, true
	case "funcs":
		return fFuncs, true
	case "wanted":
		return fWanted, true
	case "keys":
		return fKeys, true
	case "missing":
		return fMissing, true
	case "key":
		return fKey, true
	case "state":
		return fState, true
	case "worker":
		return fWorker, true
	case "items":
		return fItems, true
	case "who_has":
		return fWhoHas, true
	case "workers":
		return fWorkers, true
	case "task":
		return fTask, true
	case "tid":
		return fTaskID, true
	case "func":
		return fFuncHash, true
	case "func_data":
		return fFuncData, true
	case "payload":
		return fPayload, true
	case "deps":
		return fDeps, true
	case "order":
		return fOrder, true
	case "nbytes":
		return fNBytes, true
	case "encoding":
		return fEncoding, true
	case "start":
		return fStart, true
	case "stop":
		return fStop, true
	case "thread":
		return fThread, true
	case "accepted":
		return fAccepted, true
	case "nthreads":
		return fNThreads, true
	case "memory_limit":
		return fMemLimit, true
	case "memory":
		return fMemory, true
	case "spilled":
		return fSpilled, true
	case "executing":
		return fExecuting, true
	case "ready":
		return fReady, true
	case "cpu":
		return fCPU, true
	case "bytes_sent":
		return fBytesSent, true
	case "bytes_received":
		return fBytesRecv, true
	case "resources":
		return fResources, true
	case "functions":
		return fFunctions, true
	}
	return 0, false
}

func (d *dec) msgValue(f int, m *Msg) bool {
	var ok bool
	switch f {
	case fOp:
		m.Op, ok = d.str()
	case fID:
		m.ID, ok = d.uint()
	case fCode:
		m.Code, ok = d.str()
	case fMessage:
		m.Message, ok = d.str()
	case fError:
		if d.isNil() {
			return true
		}
		m.Error = new(Error)
		ok = d.errorValue(m.Error)
	case fClient:
		m.Client, ok = d.int()
	case fWorkerID:
		m.WorkerID, ok = d.int()
	case fVersion:
		m.Version, ok = d.str()
	case fDashboard:
		m.Dashboard, ok = d.str()
	case fScheduler:
		m.Scheduler, ok = d.str()
	case fName:
		m.Name, ok = d.str()
	case fDataAddr:
		m.DataAddr, ok = d.str()
	case fPID:
		m.PID, ok = d.intInt()
	case fPython:
		m.Python, ok = d.str()
	case fReason:
		m.Reason, ok = d.str()
	case fTasks:
		if d.isNil() {
			return true
		}
		var n int
		if n, ok = d.arrayLen(); !ok {
			return false
		}
		m.Tasks = make([]graph.Task, n)
		for i := range m.Tasks {
			if !d.task(&m.Tasks[i]) {
				return false
			}
		}
	case fFuncs:
		if d.isNil() {
			return true
		}
		var n int
		if n, ok = d.mapLen(); !ok {
			return false
		}
		m.Funcs = make(map[string][]byte, n)
		for range n {
			k, ok := d.str()
			if !ok {
				return false
			}
			if m.Funcs[k], ok = d.bin(); !ok {
				return false
			}
		}
	case fWanted:
		m.Wanted, ok = d.strs()
	case fKeys:
		m.Keys, ok = d.strs()
	case fMissing:
		m.Missing, ok = d.strs()
	case fKey:
		m.Key, ok = d.str()
	case fState:
		m.State, ok = d.str()
	case fWorker:
		m.Worker, ok = d.str()
	case fItems:
		if d.isNil() {
			return true
		}
		var n int
		if n, ok = d.arrayLen(); !ok {
			return false
		}
		m.Items = make([]Item, n)
		for i := range m.Items {
			if !d.item(&m.Items[i]) {
				return false
			}
		}
	case fWhoHas:
		if d.isNil() {
			return true
		}
		var n int
		if n, ok = d.mapLen(); !ok {
			return false
		}
		m.WhoHas = make(map[string][]string, n)
		for range n {
			k, ok := d.str()
			if !ok {
				return false
			}
			if m.WhoHas[k], ok = d.strs(); !ok {
				return false
			}
		}
	case fWorkers:
		return false // info replies only: left to the reflective decoder
	case fTask:
		if d.isNil() {
			return true
		}
		m.Task = new(graph.Task)
		ok = d.task(m.Task)
	case fTaskID:
		m.TaskID, ok = d.uint()
	case fFuncHash:
		m.FuncHash, ok = d.str()
	case fFuncData:
		m.FuncData, ok = d.bin()
	case fPayload:
		m.Payload, ok = d.bin()
	case fDeps:
		if d.isNil() {
			return true
		}
		var n int
		if n, ok = d.arrayLen(); !ok {
			return false
		}
		m.Deps = make([]Dep, n)
		for i := range m.Deps {
			if !d.dep(&m.Deps[i]) {
				return false
			}
		}
	case fOrder:
		m.Order, ok = d.int()
	case fNBytes:
		m.NBytes, ok = d.int()
	case fEncoding:
		m.Encoding, ok = d.str()
	case fStart:
		m.Start, ok = d.int()
	case fStop:
		m.Stop, ok = d.int()
	case fThread:
		m.Thread, ok = d.intInt()
	case fAccepted:
		m.Accepted, ok = d.bool()
	case fNThreads:
		m.NThreads, ok = d.intInt()
	case fMemLimit:
		m.MemLimit, ok = d.int()
	case fMemory:
		m.Memory, ok = d.int()
	case fSpilled:
		m.Spilled, ok = d.int()
	case fExecuting:
		m.Executing, ok = d.intInt()
	case fReady:
		m.Ready, ok = d.intInt()
	case fCPU:
		m.CPU, ok = d.float()
	case fBytesSent:
		m.BytesSent, ok = d.int()
	case fBytesRecv:
		m.BytesRecv, ok = d.int()
	case fResources:
		m.Resources, ok = d.floatMap()
	case fFunctions:
		m.Functions, ok = d.strs()
	}
	return ok
}

// task decodes one graph.Task map. Kind and a func name repeated from the previous task share
// one string, so a large graph does not hold a copy of them per task.
func (d *dec) task(t *graph.Task) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint16
	for range n {
		k, ok := d.strView()
		if !ok {
			return false
		}
		var bit uint16
		switch string(k) {
		case "key":
			bit = 1 << 0
			t.Key, ok = d.str()
		case "kind":
			bit = 1 << 1
			var v []byte
			if v, ok = d.strView(); ok {
				switch string(v) {
				case string(graph.KindGo):
					t.Kind = graph.KindGo
				case string(graph.KindPy):
					t.Kind = graph.KindPy
				default:
					t.Kind = graph.Kind(v)
				}
			}
		case "func":
			bit = 1 << 2
			var v []byte
			if v, ok = d.strView(); ok {
				if string(v) != d.lastFunc {
					d.lastFunc = string(v)
				}
				t.Func = d.lastFunc
			}
		case "args":
			bit = 1 << 3
			if d.isNil() {
				break
			}
			var na int
			if na, ok = d.arrayLen(); !ok {
				return false
			}
			t.Args = make([]graph.Arg, na)
			for i := range t.Args {
				if !d.arg(&t.Args[i]) {
					return false
				}
			}
		case "payload":
			bit = 1 << 4
			t.Payload, ok = d.bin()
		case "deps":
			bit = 1 << 5
			t.Deps, ok = d.strs()
		case "priority":
			bit = 1 << 6
			t.Priority, ok = d.intInt()
		case "retries":
			bit = 1 << 7
			t.Retries, ok = d.intInt()
		case "resources":
			bit = 1 << 8
			t.Resources, ok = d.floatMap()
		case "workers":
			bit = 1 << 9
			t.Workers, ok = d.strs()
		case "group":
			bit = 1 << 10
			t.Group, ok = d.str()
		default:
			ok = d.skip(0)
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return true
}

// arg decodes {"r": key} or {"v": literal}; literals of the common scalar types are decoded
// here with the Go types msgpack's DecodeInterface gives, anything else by msgpack itself.
func (d *dec) arg(a *graph.Arg) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint8
	for range n {
		k, ok := d.strView()
		if !ok {
			return false
		}
		var bit uint8
		switch string(k) {
		case "r":
			bit = 1
			a.Ref, ok = d.str()
		case "v":
			bit = 2
			a.Val, ok = d.any()
		default:
			ok = d.skip(0)
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return true
}

func (d *dec) any() (any, bool) {
	c, ok := d.peek()
	if !ok {
		return nil, false
	}
	switch {
	case c <= 0x7f || c >= 0xe0:
		d.i++
		return int8(c), true
	case c >= 0xa0 && c <= 0xbf, c == 0xd9, c == 0xda, c == 0xdb:
		return d.str()
	}
	switch c {
	case 0xc0:
		d.i++
		return nil, true
	case 0xc2, 0xc3:
		return d.bool()
	case 0xcb:
		return d.float()
	case 0xcc:
		v, ok := d.fixed(1)
		return uint8(v), ok
	case 0xcd:
		v, ok := d.fixed(2)
		return uint16(v), ok
	case 0xce:
		v, ok := d.fixed(4)
		return uint32(v), ok
	case 0xcf:
		v, ok := d.fixed(8)
		return v, ok
	case 0xd0:
		v, ok := d.fixed(1)
		return int8(v), ok
	case 0xd1:
		v, ok := d.fixed(2)
		return int16(v), ok
	case 0xd2:
		v, ok := d.fixed(4)
		return int32(v), ok
	case 0xd3:
		v, ok := d.fixed(8)
		return int64(v), ok
	}
	// containers, float32, bin and ext: let msgpack decode exactly that value
	start := d.i
	if !d.skip(0) {
		return nil, false
	}
	var v any
	if msgpack.Unmarshal(d.b[start:d.i], &v) != nil {
		return nil, false
	}
	return v, true
}

func (d *dec) errorValue(e *Error) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint8
	for range n {
		k, ok := d.strView()
		if !ok {
			return false
		}
		var bit uint8
		switch string(k) {
		case "code":
			bit = 1
			e.Code, ok = d.str()
		case "type":
			bit = 2
			e.Type, ok = d.str()
		case "message":
			bit = 4
			e.Message, ok = d.str()
		case "traceback":
			bit = 8
			e.Traceback, ok = d.str()
		case "exc":
			bit = 16
			e.Exc, ok = d.bin()
		default:
			ok = d.skip(0)
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return true
}

func (d *dec) item(it *Item) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint8
	for range n {
		k, ok := d.strView()
		if !ok {
			return false
		}
		var bit uint8
		switch string(k) {
		case "key":
			bit = 1
			it.Key, ok = d.str()
		case "encoding":
			bit = 2
			it.Encoding, ok = d.str()
		case "nframes":
			bit = 4
			it.NFrames, ok = d.intInt()
		case "nbytes":
			bit = 8
			it.NBytes, ok = d.int()
		default:
			ok = d.skip(0)
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return true
}

func (d *dec) dep(dp *Dep) bool {
	n, ok := d.mapLen()
	if !ok {
		return false
	}
	var seen uint8
	for range n {
		k, ok := d.strView()
		if !ok {
			return false
		}
		var bit uint8
		switch string(k) {
		case "key":
			bit = 1
			dp.Key, ok = d.str()
		case "who_has":
			bit = 2
			dp.WhoHas, ok = d.strs()
		case "nbytes":
			bit = 4
			dp.NBytes, ok = d.int()
		default:
			ok = d.skip(0)
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return true
}

// dec reads msgpack values from b; every method reports ok=false instead of an error.
type dec struct {
	b        []byte
	i        int
	lastFunc string
}

func (d *dec) peek() (byte, bool) {
	if d.i >= len(d.b) {
		return 0, false
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

// fixed reads an n-byte big-endian unsigned integer.
func (d *dec) fixed(n int) (uint64, bool) {
	d.i++ // the code byte
	if len(d.b)-d.i < n {
		return 0, false
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

func (d *dec) mapLen() (int, bool) {
	c, ok := d.peek()
	if !ok {
		return 0, false
	}
	var n uint64
	switch {
	case c >= 0x80 && c <= 0x8f:
		d.i++
		return int(c & 0x0f), true
	case c == 0xde:
		n, ok = d.fixed(2)
	case c == 0xdf:
		n, ok = d.fixed(4)
	default:
		return 0, false
	}
	// every entry takes at least two bytes: a longer count is a corrupt frame
	return int(n), ok && n <= uint64(len(d.b)-d.i)/2
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
		return int(c & 0x0f), true
	case c == 0xdc:
		n, ok = d.fixed(2)
	case c == 0xdd:
		n, ok = d.fixed(4)
	default:
		return 0, false
	}
	return int(n), ok && n <= uint64(len(d.b)-d.i)
}

// strView returns the bytes of a str value without copying them.
func (d *dec) strView() ([]byte, bool) {
	c, ok := d.peek()
	if !ok {
		return nil, false
	}
	var n uint64
	switch {
	case c >= 0xa0 && c <= 0xbf:
		d.i++
		n = uint64(c & 0x1f)
	case c == 0xd9:
		n, ok = d.fixed(1)
	case c == 0xda:
		n, ok = d.fixed(2)
	case c == 0xdb:
		n, ok = d.fixed(4)
	default:
		return nil, false
	}
	if !ok || n > uint64(len(d.b)-d.i) {
		return nil, false
	}
	v := d.b[d.i : d.i+int(n)]
	d.i += int(n)
	return v, true
}

func (d *dec) str() (string, bool) {
	v, ok := d.strView()
	return string(v), ok
}

func (d *dec) strs() ([]string, bool) {
	if d.isNil() {
		return nil, true
	}
	n, ok := d.arrayLen()
	if !ok {
		return nil, false
	}
	out := make([]string, n)
	for i := range out {
		if out[i], ok = d.str(); !ok {
			return nil, false
		}
	}
	return out, true
}

// bin decodes a bin value into a new slice (nil stays nil, as with msgpack).
func (d *dec) bin() ([]byte, bool) {
	c, ok := d.peek()
	if !ok {
		return nil, false
	}
	var n uint64
	switch c {
	case 0xc0:
		d.i++
		return nil, true
	case 0xc4:
		n, ok = d.fixed(1)
	case 0xc5:
		n, ok = d.fixed(2)
	case 0xc6:
		n, ok = d.fixed(4)
	default:
		return nil, false
	}
	if !ok || n > uint64(len(d.b)-d.i) {
		return nil, false
	}
	v := make([]byte, n)
	copy(v, d.b[d.i:])
	d.i += int(n)
	return v, true
}

func (d *dec) int() (int64, bool) {
	c, ok := d.peek()
	if !ok {
		return 0, false
	}
	switch {
	case c <= 0x7f:
		d.i++
		return int64(c), true
	case c >= 0xe0:
		d.i++
		return int64(int8(c)), true
	}
	var v uint64
	switch c {
	case 0xcc:
		v, ok = d.fixed(1)
		return int64(v), ok
	case 0xcd:
		v, ok = d.fixed(2)
		return int64(v), ok
	case 0xce:
		v, ok = d.fixed(4)
		return int64(v), ok
	case 0xcf:
		v, ok = d.fixed(8)
		return int64(v), ok && v <= math.MaxInt64
	case 0xd0:
		v, ok = d.fixed(1)
		return int64(int8(v)), ok
	case 0xd1:
		v, ok = d.fixed(2)
		return int64(int16(v)), ok
	case 0xd2:
		v, ok = d.fixed(4)
		return int64(int32(v)), ok
	case 0xd3:
		v, ok = d.fixed(8)
		return int64(v), ok
	}
	return 0, false
}

func (d *dec) intInt() (int, bool) {
	v, ok := d.int()
	return int(v), ok
}

func (d *dec) uint() (uint64, bool) {
	c, ok := d.peek()
	if !ok {
		return 0, false
	}
	if c == 0xcf {
		return d.fixed(8)
	}
	v, ok := d.int()
	return uint64(v), ok && v >= 0
}

func (d *dec) bool() (bool, bool) {
	c, ok := d.peek()
	if !ok || (c != 0xc2 && c != 0xc3) {
		return false, false
	}
	d.i++
	return c == 0xc3, true
}

func (d *dec) float() (float64, bool) {
	c, ok := d.peek()
	if !ok || c != 0xcb {
		return 0, false
	}
	v, ok := d.fixed(8)
	return math.Float64frombits(v), ok
}

func (d *dec) floatMap() (map[string]float64, bool) {
	if d.isNil() {
		return nil, true
	}
	n, ok := d.mapLen()
	if !ok {
		return nil, false
	}
	out := make(map[string]float64, n)
	for range n {
		k, ok := d.str()
		if !ok {
			return nil, false
		}
		if out[k], ok = d.float(); !ok {
			return nil, false
		}
	}
	return out, true
}

// skip moves past one value of any type.
func (d *dec) skip(depth int) bool {
	if depth > 64 {
		return false
	}
	c, ok := d.peek()
	if !ok {
		return false
	}
	var n uint64
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		d.i++
		return true
	case c >= 0xa0 && c <= 0xbf, c == 0xd9, c == 0xda, c == 0xdb:
		_, ok = d.strView()
		return ok
	case c >= 0x80 && c <= 0x8f, c == 0xde, c == 0xdf:
		if n, ok := d.mapLen(); ok {
			for range 2 * n {
				if !d.skip(depth + 1) {
					return false
				}
			}
			return true
		}
		return false
	case c >= 0x90 && c <= 0x9f, c == 0xdc, c == 0xdd:
		if n, ok := d.arrayLen(); ok {
			for range n {
				if !d.skip(depth + 1) {
					return false
				}
			}
			return true
		}
		return false
	}
	switch c {
	case 0xc4, 0xc5, 0xc6:
		_, ok = d.bin()
		return ok
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
			return false
		}
		d.i += int(l) + 1
		return true
	default:
		return false
	}
	if n > uint64(len(d.b)-d.i) {
		return false
	}
	d.i += int(n)
	return true
}

// Reader reads msgpack values from a buffer, for hand-written decoders of headers outside this
// package (the worker decodes its executor's `done` answers, which carry fields of §3.5 that
// Msg does not have). Every method reports ok=false, never an error, on anything unexpected;
// callers fall back to DecodeHeader.
type Reader struct{ d dec }

// NewReader reads from b.
func NewReader(b []byte) *Reader { return &Reader{d: dec{b: b}} }

// MapLen reads a map header.
func (r *Reader) MapLen() (int, bool) { return r.d.mapLen() }

// ArrayLen reads an array header.
func (r *Reader) ArrayLen() (int, bool) { return r.d.arrayLen() }

// Str reads a string.
func (r *Reader) Str() (string, bool) { return r.d.str() }

// Int reads a signed or unsigned integer that fits an int64.
func (r *Reader) Int() (int64, bool) { return r.d.int() }

// Uint reads a non-negative integer.
func (r *Reader) Uint() (uint64, bool) { return r.d.uint() }

// Item reads an Item map (key, encoding, nframes, nbytes).
func (r *Reader) Item(it *Item) bool { return r.d.item(it) }

// Done tells whether the whole buffer has been read.
func (r *Reader) Done() bool { return r.d.i == len(r.d.b) }
