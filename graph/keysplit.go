package graph

// KeySplit returns the task-group name of a key, in the manner of dask.utils.key_split:
//
//	"inc-abc123def456"         → "inc"
//	"sum-3"                    → "sum"
//	"read-parquet-0a1b2c3d"    → "read-parquet"
//	"('x', 0, 1)"              → "x"
//	"load_5f0c3e4a9b1d2e7f"    → "load"
//
// Words after the first '-' are kept while they are purely alphabetic and not an 8-character
// hex token; the first word that is numeric or a token ends the name. A key that is a
// 32-character hex digest is named "data". The result is a substring of key (no allocation).
func KeySplit(key string) string {
	if key == "" {
		return "Other"
	}
	if !isAlpha(key[0]) {
		return dataName(tupleName(key))
	}
	end := wordEnd(key, 0)
	for end < len(key) {
		next := wordEnd(key, end+1)
		w := key[end+1 : next]
		if !allAlpha(w) || (len(w) == 8 && allHex(w)) {
			break
		}
		end = next
	}
	return trimHexSuffix(dataName(key[:end]))
}

// dataName names a 32-character hex digest (a content hash, as scatter makes) "data".
func dataName(name string) string {
	if len(name) == 32 && allHex(name) {
		return "data"
	}
	return name
}

// GroupOf returns t.Group when set, otherwise KeySplit(t.Key).
func GroupOf(t *Task) string {
	if t.Group != "" {
		return t.Group
	}
	return KeySplit(t.Key)
}

// tupleName handles keys such as "('x', 0, 1)": the first tuple element, unquoted.
func tupleName(key string) string {
	first := key
	for i := 0; i < len(key); i++ {
		if key[i] == ',' || key[i] == '-' {
			first = key[:i]
			break
		}
	}
	lo, hi := 0, len(first)
	for lo < hi && isTrim(first[lo]) {
		lo++
	}
	for hi > lo && isTrim(first[hi-1]) {
		hi--
	}
	if lo == hi {
		return "Other"
	}
	return first[lo:hi]
}

// trimHexSuffix strips "_<hex token>" (at least 8 hex digits) from names without a '-'.
func trimHexSuffix(name string) string {
	for i := len(name) - 1; i > 0; i-- {
		if name[i] == '_' {
			if tok := name[i+1:]; len(tok) >= 8 && allHex(tok) {
				return name[:i]
			}
			return name
		}
	}
	return name
}

func wordEnd(s string, from int) int {
	for i := from; i < len(s); i++ {
		if s[i] == '-' {
			return i
		}
	}
	return len(s)
}

func isTrim(c byte) bool {
	return c == '_' || c == '\'' || c == '(' || c == ')' || c == '"' || c == ' '
}

func isAlpha(c byte) bool { return (c|0x20) >= 'a' && (c|0x20) <= 'z' }

func allAlpha(w string) bool {
	if w == "" {
		return false
	}
	for i := 0; i < len(w); i++ {
		if !isAlpha(w[i]) {
			return false
		}
	}
	return true
}

func allHex(w string) bool {
	for i := 0; i < len(w); i++ {
		c := w[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
