package graph

import "github.com/vmihailenco/msgpack/v5"

// Kind says how a task's function is found and run.
type Kind string

// Task kinds.
const (
	// KindGo is a Go function registered by name in the worker binary (worker.Register).
	KindGo Kind = "go"
	// KindPy is a cloudpickled Python callable run by the worker's Python executors.
	KindPy Kind = "py"
)

// Arg is one positional argument of a Go task: a reference to another task's result when Ref
// is set, otherwise the msgpack literal Val.
type Arg struct {
	Ref string `msgpack:"r,omitempty"`
	Val any    `msgpack:"v,omitempty"`
}

// Ref returns an argument that refers to the result of key.
func Ref(key string) Arg { return Arg{Ref: key} }

// Lit returns a literal argument.
func Lit(v any) Arg { return Arg{Val: v} }

// Task is one node of a graph as it travels on the wire (docs/protocol.md §3.1).
type Task struct {
	Key       string             `msgpack:"key"`
	Kind      Kind               `msgpack:"kind"`
	Func      string             `msgpack:"func"`
	Args      []Arg              `msgpack:"args,omitempty"`
	Payload   []byte             `msgpack:"payload,omitempty"`
	Deps      []string           `msgpack:"deps,omitempty"`
	Priority  int                `msgpack:"priority,omitempty"`
	Retries   int                `msgpack:"retries,omitempty"`
	Resources map[string]float64 `msgpack:"resources,omitempty"`
	Workers   []string           `msgpack:"workers,omitempty"`
	Group     string             `msgpack:"group,omitempty"`
}

// EncodeMsgpack writes {"r": key} for a reference and {"v": value} for a literal, so that
// zero literals (0, "", false) survive: a struct tag's omitempty would drop them.
func (a Arg) EncodeMsgpack(enc *msgpack.Encoder) error {
	if err := enc.EncodeMapLen(1); err != nil {
		return err
	}
	if a.Ref != "" {
		if err := enc.EncodeString("r"); err != nil {
			return err
		}
		return enc.EncodeString(a.Ref)
	}
	if err := enc.EncodeString("v"); err != nil {
		return err
	}
	return enc.Encode(a.Val)
}
