package shoal

// Arg is an argument of type T to a typed task: a Ref[T] to another task's result, a literal
// (Lit), or, for a slice type, the results of several tasks (Collect). Only this package
// implements it.
type Arg[T any] interface {
	spec() argSpec
	// argOf mentions T, so that an Arg[string] is no Arg[int64]: without it every Arg would
	// have the same method set and one would be assignable to another.
	argOf(T)
}

// argSpec is an argument as the graph encodes it.
type argSpec struct {
	kind argKind
	ref  string   // argRef
	lit  any      // argLit
	refs []string // argGroup
}

type argKind uint8

const (
	argRef argKind = iota
	argLit
	argGroup
)

// Ref is a typed reference to a task's result: the value a task returns, or a value put on
// the cluster with Scatter. Pass it to typed calls as an argument of type T, and read it with
// Get or Submit. The zero Ref refers to nothing.
type Ref[T any] struct{ key string }

// RefOf makes a typed reference to an existing key (made by the untyped API, another client,
// or Python). The type is the caller's claim; a mismatch shows when the value is decoded.
func RefOf[T any](key Key) Ref[T] { return Ref[T]{key: string(key)} }

// Key is the task key the reference names.
func (r Ref[T]) Key() Key { return Key(r.key) }

func (r Ref[T]) spec() argSpec { return argSpec{kind: argRef, ref: r.key} }
func (Ref[T]) argOf(T)         {}

type literal[T any] struct{ v T }

func (l literal[T]) spec() argSpec { return argSpec{kind: argLit, lit: l.v} }
func (literal[T]) argOf(T)         {}

// Lit is a literal argument: v travels inside the graph as msgpack (for Go tasks; a Python
// task receives the same value through msgpack.unpackb). Keep literals small; put large
// values on the cluster with Scatter.
func Lit[T any](v T) Arg[T] { return literal[T]{v} }

type collected[T any] struct{ keys []string }

func (c collected[T]) spec() argSpec { return argSpec{kind: argGroup, refs: c.keys} }
func (collected[T]) argOf([]T)       {}

// Collect makes one argument of type []T from the results of several tasks, in order: the
// task receives them as a slice, each fetched from wherever it was computed, with no
// intermediate task. It is an argument only; to keep the slice as a result, return it from a
// task. It works with functions declared by Func (which register the form it calls,
// name#collect) and with Python functions (which receive a list); a Go function declared with
// Extern must have been declared with Func in the workers' binary.
func Collect[T any](refs []Ref[T]) Arg[[]T] {
	keys := make([]string, len(refs))
	for i, r := range refs {
		keys[i] = r.key
	}
	return collected[T]{keys}
}
