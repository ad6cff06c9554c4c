package wire

// TaskFinished is a task_finished header's fields (docs/protocol.md §3.3), decoded without a
// Msg by DecodeTaskFinished.
//
// It is the scheduler's most frequent message, one per task. Decoded into a pooled Msg, each
// went from a reader goroutine to the driver and back to the pool: the driver cleared all 824
// bytes of it, and the next reader to take it, on the other core, pulled those cache lines
// back. At 10,000 workers the pool's Put alone was 0.26 µs per task (docs/performance.md,
// "10,000 workers: the read-ahead budget").
type TaskFinished struct {
	Key         string
	TaskID      uint64
	NBytes      int64
	Encoding    string
	Start, Stop int64
	Thread      int
	Keys        []string // futures the result holds
}

// DecodeTaskFinished decodes b into f when b is a task_finished header of no other fields
// than TaskFinished's (and op), each once and of its type, as DecodeHeader would; it returns
// false for anything else, f then undefined: the caller decodes b with DecodeHeader, which
// also says what is wrong with it.
func DecodeTaskFinished(b []byte, f *TaskFinished) bool {
	*f = TaskFinished{}
	d := dec{b: b, limited: true, budget: budgetFactor*int64(len(b)) + budgetBase}
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
		case "op":
			bit = 1
			v, ok := d.strView()
			if !ok || string(v) != OpTaskFinished {
				return false
			}
		case "key":
			bit, ok = 2, d.str(&f.Key)
		case "tid":
			bit, ok = 4, d.uint(&f.TaskID)
		case "nbytes":
			bit, ok = 8, d.int(&f.NBytes)
		case "encoding":
			bit, ok = 16, d.encoding(&f.Encoding)
		case "start":
			bit, ok = 32, d.int(&f.Start)
		case "stop":
			bit, ok = 64, d.int(&f.Stop)
		case "thread":
			bit, ok = 128, d.intInt(&f.Thread)
		case "keys":
			// through a copy: passing d itself to the generic slice decoder moved it to the
			// heap for every call, 136 bytes per task_finished
			kd := d
			bit, ok = 256, kd.strs(&f.Keys)
			d = kd
		default:
			return false
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return seen&1 != 0 && d.i == len(d.b)
}
