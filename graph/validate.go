package graph

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
)

// Error codes returned in Error.Code. They equal the wire codes of docs/protocol.md §5
// (internal/wire/codes.go); graph cannot import wire, which imports graph.
const (
	CodeGraphCycle        = "graph-cycle"
	CodeMissingDependency = "missing-dependency"
	CodeKeyConflict       = "key-conflict"
	CodeInvalidTask       = "invalid-task"
)

// Error is a refused graph: a stable code and a message naming the keys involved.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return "graph: " + e.Code + ": " + e.Message }

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Deps returns the keys t depends on: t.Deps when set, otherwise, for Go tasks, the distinct
// references among t.Args in the order they first appear. The result must not be modified.
func Deps(t *Task) []string {
	if len(t.Deps) > 0 || t.Kind != KindGo {
		return t.Deps
	}
	var out []string
	for i := range t.Args {
		r := t.Args[i].Ref
		if r != "" && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// CheckTask reports whether one task is well formed on its own (code invalid-task).
func CheckTask(t *Task) *Error {
	switch {
	case t.Key == "":
		return errorf(CodeInvalidTask, "a task has an empty key")
	case t.Kind != KindGo && t.Kind != KindPy:
		return errorf(CodeInvalidTask, "task %q has unknown kind %q (want %q or %q)", t.Key, t.Kind, KindGo, KindPy)
	case t.Func == "":
		return errorf(CodeInvalidTask, "task %q has no func", t.Key)
	case t.Kind == KindGo && len(t.Payload) > 0:
		return errorf(CodeInvalidTask, "go task %q has a payload (only py tasks carry one)", t.Key)
	case t.Retries < 0:
		return errorf(CodeInvalidTask, "task %q has negative retries %d", t.Key, t.Retries)
	}
	if len(t.Resources) > 0 { // ranging over none still starts an iterator (4-7 ns a task)
		for name, v := range t.Resources {
			if v < 0 || v != v {
				return errorf(CodeInvalidTask, "task %q asks for an invalid amount %v of resource %q", t.Key, v, name)
			}
		}
	}
	for _, d := range Deps(t) {
		if d == "" {
			return errorf(CodeInvalidTask, "task %q has a dependency with an empty key", t.Key)
		}
	}
	return nil
}

// Same reports whether a and b define the same task (same key, kind, function, arguments,
// payload, dependencies and annotations). Re-submitting a key with the same definition is
// allowed; with another one it is a key conflict.
func Same(a, b *Task) bool {
	if a == b {
		return true
	}
	if a.Key != b.Key || a.Kind != b.Kind || a.Func != b.Func || a.Priority != b.Priority ||
		a.Retries != b.Retries || a.Group != b.Group || string(a.Payload) != string(b.Payload) ||
		!slices.Equal(Deps(a), Deps(b)) || !slices.Equal(a.Workers, b.Workers) ||
		!maps.Equal(a.Resources, b.Resources) || len(a.Args) != len(b.Args) {
		return false
	}
	for i := range a.Args {
		x, y := &a.Args[i], &b.Args[i]
		if x.Ref != y.Ref || !reflect.DeepEqual(x.Val, y.Val) {
			return false
		}
	}
	return true
}

// Validate checks a batch of tasks as a whole. known reports whether a key outside the batch
// already exists (it may be nil: nothing is known). It returns nil or an *Error:
//   - invalid-task: a task is malformed (see CheckTask);
//   - key-conflict: the same key appears twice in the batch with different definitions
//     (identical duplicates are allowed);
//   - missing-dependency: a dependency is neither in the batch nor known;
//   - graph-cycle: the batch has a dependency cycle; the message names a key on it.
func Validate(tasks []Task, known func(key string) bool) error {
	if _, err := validate(tasks, known); err != nil {
		return err
	}
	return nil
}

// Batch is what ValidateBatch learned of a valid batch, for a caller that interns it without
// looking every dependency up again.
type Batch struct {
	// Dups: a key appears in the batch more than once (with identical definitions).
	Dups bool
	// DepOff and DepAt give each task's dependencies, in the order of Deps, as indexes into
	// the batch: those of task i are DepAt[DepOff[i]:DepOff[i+1]], where -1 stands for a key
	// outside the batch (a known one), and a key the batch holds twice is its first.
	DepOff, DepAt []int32
}

// ValidateBatch is Validate that also returns the batch's dependencies as indexes (Batch).
func ValidateBatch(tasks []Task, known func(key string) bool) (Batch, error) {
	b, e := validate(tasks, known)
	if e != nil {
		return b, e
	}
	return b, nil
}

func validate(tasks []Task, known func(string) bool) (Batch, *Error) {
	var b Batch
	index := make(map[string]int32, len(tasks))
	nd := 0
	for i := range tasks {
		t := &tasks[i]
		if err := CheckTask(t); err != nil {
			return b, err
		}
		nd += len(t.Deps)
		if j, dup := index[t.Key]; dup {
			if !Same(&tasks[j], t) {
				b.Dups = true
				return b, errorf(CodeKeyConflict, "key %q appears twice in the graph with different definitions", t.Key)
			}
			continue
		}
		index[t.Key] = int32(i)
	}
	b.Dups = len(index) < len(tasks)
	b.DepOff = make([]int32, len(tasks)+1)
	b.DepAt = make([]int32, 0, nd)
	var inBatchDeps bool
	for i := range tasks {
		t := &tasks[i]
		for _, d := range Deps(t) {
			if j, ok := index[d]; ok {
				inBatchDeps = true
				b.DepAt = append(b.DepAt, j)
				continue
			}
			if known == nil || !known(d) {
				return b, errorf(CodeMissingDependency, "task %q depends on %q, which is neither in the graph nor known", t.Key, d)
			}
			b.DepAt = append(b.DepAt, -1)
		}
		b.DepOff[i+1] = int32(len(b.DepAt))
	}
	if !inBatchDeps {
		return b, nil // no edge inside the batch: no cycle
	}
	if k, ok := findCycle(tasks, &b); ok {
		return b, errorf(CodeGraphCycle, "the graph has a cycle through key %q", k)
	}
	return b, nil
}

// findCycle runs Kahn's algorithm over the batch's edges (an identical duplicate is a node
// of its own, which nothing depends on); when some tasks are never freed, it walks
// dependencies among them until a task repeats, which is then on a cycle.
func findCycle(tasks []Task, b *Batch) (string, bool) {
	n := len(tasks)
	pending := make([]int32, n) // in-batch deps not yet resolved
	off := make([]int32, n+1)   // dependents in CSR form
	for i := range n {
		for _, j := range b.DepAt[b.DepOff[i]:b.DepOff[i+1]] {
			if j >= 0 {
				pending[i]++
				off[j+1]++
			}
		}
	}
	for i := range n {
		off[i+1] += off[i]
	}
	fill := slices.Clone(off[:n])
	dependents := make([]int32, off[n])
	stack := make([]int32, 0, 64)
	for i := range n {
		for _, j := range b.DepAt[b.DepOff[i]:b.DepOff[i+1]] {
			if j >= 0 {
				dependents[fill[j]] = int32(i)
				fill[j]++
			}
		}
		if pending[i] == 0 {
			stack = append(stack, int32(i))
		}
	}
	for len(stack) > 0 {
		j := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, k := range dependents[off[j]:off[j+1]] {
			if pending[k]--; pending[k] == 0 {
				stack = append(stack, k)
			}
		}
	}
	start := slices.IndexFunc(pending, func(p int32) bool { return p > 0 })
	if start < 0 {
		return "", false
	}
	// Every unresolved task has an unresolved in-batch dependency; follow them.
	seen := make(map[int32]bool)
	cur := int32(start)
	for !seen[cur] {
		seen[cur] = true
		for _, j := range b.DepAt[b.DepOff[cur]:b.DepOff[cur+1]] {
			if j >= 0 && pending[j] > 0 {
				cur = j
				break
			}
		}
	}
	return tasks[cur].Key, true
}
