package wire

// RunEntry is one run of a runs message (docs/protocol.md §3.5): the run's header, whether its
// executor may keep the result, and how many payload frames it has.
type RunEntry struct {
	Msg     *Msg
	Keep    bool
	NFrames int
}

// AppendRunsHeader appends the header of a runs message: {"op": "runs", "runs": [entry],
// "nframes": [count]}, each entry positional, [id, key, func, payload, [[key, encoding,
// nframes, nbytes]], extra], extra being a map of the run's optional fields that are set
// (func_data, timeout, keep: 1) or nil. An entry carries only those fields of its Msg: the
// fields a worker sets on a run it batches (pyRunFor, runPyOnce). Decoding maps costs an
// executor ~1.8 µs per run in msgpack alone, arrays ~0.5.
func AppendRunsHeader(b []byte, runs []RunEntry) []byte {
	b = append(b, 0x83, 0xa2, 'o', 'p', 0xa4, 'r', 'u', 'n', 's', 0xa4, 'r', 'u', 'n', 's')
	b = appendArrayLen(b, len(runs))
	for i := range runs {
		b = appendRunEntry(b, &runs[i])
	}
	b = append(b, 0xa7, 'n', 'f', 'r', 'a', 'm', 'e', 's')
	b = appendArrayLen(b, len(runs))
	for i := range runs {
		b = appendUint(b, uint64(runs[i].NFrames))
	}
	return b
}

func appendRunEntry(b []byte, r *RunEntry) []byte {
	m := r.Msg
	b = append(b, 0x96)
	b = appendUint(b, m.ID)
	b = appendStr(b, m.Key)
	b = appendStr(b, m.FuncHash)
	b = appendBin(b, m.Payload)
	b = appendArrayLen(b, len(m.Items))
	for i := range m.Items {
		it := &m.Items[i]
		b = append(b, 0x94)
		b = appendStr(b, it.Key)
		b = appendStr(b, it.Encoding)
		b = appendInt(b, int64(it.NFrames))
		b = appendInt(b, it.NBytes)
	}
	n := 0
	if len(m.FuncData) > 0 {
		n++
	}
	if m.Timeout != 0 {
		n++
	}
	if r.Keep {
		n++
	}
	if n == 0 {
		return append(b, 0xc0)
	}
	b = appendMapLen(b, n)
	if len(m.FuncData) > 0 {
		b = appendBin(appendStr(b, "func_data"), m.FuncData)
	}
	if m.Timeout != 0 {
		b = appendFloat(appendStr(b, "timeout"), m.Timeout)
	}
	if r.Keep {
		b = append(appendStr(b, "keep"), 0x01)
	}
	return b
}
