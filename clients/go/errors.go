package shoal

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sync"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Errors a *TaskError matches with errors.Is, by the stable code the cluster gave it.
var (
	// ErrTaskFailed: the task's function returned an error (code task-error).
	ErrTaskFailed = errors.New("shoal: task failed")
	// ErrPanic: the task's Go function panicked (code task-panic); Traceback holds the stack.
	ErrPanic = errors.New("shoal: task panicked")
	// ErrCancelled: the key was cancelled (Cancel, or a cancelled dependency).
	ErrCancelled = errors.New("shoal: task cancelled")
	// ErrLost: the key's data was lost and cannot be recomputed, or the client lost the
	// scheduler.
	ErrLost = errors.New("shoal: result lost")
	// ErrKilledWorker: the task was running on workers that died too many times.
	ErrKilledWorker = errors.New("shoal: task killed its workers")
	// ErrUnknownFunction: no worker of the cluster registers the task's Go function (the
	// graph was refused), or the worker that ran it does not.
	ErrUnknownFunction = errors.New("shoal: unknown function")
	// ErrGraphRejected: the graph was refused (cycle, missing dependency, key conflict,
	// invalid task).
	ErrGraphRejected = errors.New("shoal: graph rejected")
)

var codeErrors = map[string]error{
	wire.CodeTaskError:         ErrTaskFailed,
	wire.CodeTaskPanic:         ErrPanic,
	wire.CodeCancelled:         ErrCancelled,
	wire.CodeLost:              ErrLost,
	wire.CodeFetchFailed:       ErrLost,
	wire.CodeExecutorDied:      ErrKilledWorker,
	wire.CodeKilledWorker:      ErrKilledWorker,
	wire.CodeUnknownFunction:   ErrUnknownFunction,
	wire.CodeGraphCycle:        ErrGraphRejected,
	wire.CodeMissingDependency: ErrGraphRejected,
	wire.CodeKeyConflict:       ErrGraphRejected,
	wire.CodeInvalidTask:       ErrGraphRejected,
}

// TaskError is why a key has no result: the task's error as the worker reported it, a
// cancellation, a lost result or a refused graph. Match it with errors.Is against ErrPanic,
// ErrCancelled, ... and, for error values and types registered with RegisterError and
// RegisterErrorType, against the task's own error: errors.Is(err, ErrNotFound) and
// errors.As(err, &myErr) work across the cluster.
type TaskError struct {
	Key       string // the key whose future failed
	Code      string // stable code (docs/protocol.md §5): task-error, task-panic, cancelled, ...
	Type      string // the Go type of the task's error (e.g. *fs.PathError), "panic", or a Python exception type
	Message   string
	Traceback string // a panic's stack, or the Python traceback

	wire  *wire.Error
	cause error // the task's own error, rebuilt when its value or type was registered
}

func newTaskError(key string, we *wire.Error) *TaskError {
	return &TaskError{Key: key, Code: we.Code, Type: we.Type, Message: we.Message, Traceback: we.Traceback,
		wire: we, cause: decodeGoError(we.Exc)}
}

// Error says which key failed, how, and why.
func (e *TaskError) Error() string {
	if e.Type != "" && e.Type != "panic" {
		return fmt.Sprintf("shoal: key %s: %s: %s: %s", e.Key, e.Code, e.Type, e.Message)
	}
	return fmt.Sprintf("shoal: key %s: %s: %s", e.Key, e.Code, e.Message)
}

// Is matches the sentinel of the error's code.
func (e *TaskError) Is(target error) bool { return codeErrors[e.Code] == target && target != nil }

// Unwrap gives the task's own error when it could be rebuilt, and the wire error.
func (e *TaskError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.cause, e.wire}
	}
	return []error{e.wire}
}

// goErrMagic starts a Go error value carried in a wire Error's exc field. Python loads exc
// with pickle only for task-error and gives up on anything else; a pickle never starts with
// a zero byte, so Python refuses this at once.
var goErrMagic = []byte("\x00shoal-go-error\x00")

// goErr is what travels after goErrMagic: a registered sentinel's name, or a registered type's
// name and its value as msgpack.
type goErr struct {
	Sentinel string `msgpack:"s,omitempty"`
	Type     string `msgpack:"t,omitempty"`
	Value    []byte `msgpack:"v,omitempty"`
}

var errRegistry struct {
	sync.RWMutex
	sentinels map[string]error        // by Error() text
	types     map[string]reflect.Type // by %T name
}

// RegisterError lets errors.Is(err, target) hold on the client when a task's error matches
// target (errors.Is) on the worker. Register in init or at package level, in the program that
// runs the workers and the one that reads the error (in a one-binary program, once). Targets
// are told apart by their text, which must be unique among registered errors.
func RegisterError(target error) {
	errRegistry.Lock()
	defer errRegistry.Unlock()
	if errRegistry.sentinels == nil {
		errRegistry.sentinels = map[string]error{}
	}
	errRegistry.sentinels[target.Error()] = target
}

// RegisterErrorType lets errors.As(err, &e) with e of type E hold on the client when a task's
// error is, or wraps, an E: the worker sends E's exported fields as msgpack and the client
// rebuilds the value. Register as RegisterError does.
func RegisterErrorType[E error]() {
	t := reflect.TypeFor[E]()
	errRegistry.Lock()
	defer errRegistry.Unlock()
	if errRegistry.types == nil {
		errRegistry.types = map[string]reflect.Type{}
	}
	errRegistry.types[t.String()] = t
}

// toWireError turns a typed task function's error into the wire error the worker reports,
// carrying a registered sentinel or error type so that the client can rebuild it.
func toWireError(err error) error {
	var we *wire.Error
	if errors.As(err, &we) {
		return err
	}
	we = &wire.Error{Code: wire.CodeTaskError, Type: fmt.Sprintf("%T", err), Message: err.Error()}
	if ge, ok := matchRegistered(err); ok {
		if b, e := msgpack.Marshal(ge); e == nil {
			we.Exc = append(append([]byte(nil), goErrMagic...), b...)
		}
	}
	return we
}

func matchRegistered(err error) (goErr, bool) {
	errRegistry.RLock()
	defer errRegistry.RUnlock()
	for _, t := range errRegistry.types {
		p := reflect.New(t)
		if errors.As(err, p.Interface()) {
			b, e := msgpack.Marshal(p.Elem().Interface())
			if e == nil {
				return goErr{Type: t.String(), Value: b}, true
			}
		}
	}
	for name, s := range errRegistry.sentinels {
		if errors.Is(err, s) {
			return goErr{Sentinel: name}, true
		}
	}
	return goErr{}, false
}

// decodeGoError rebuilds a registered error from a wire error's exc field, or returns nil.
func decodeGoError(exc []byte) error {
	if !bytes.HasPrefix(exc, goErrMagic) {
		return nil
	}
	var ge goErr
	if msgpack.Unmarshal(exc[len(goErrMagic):], &ge) != nil {
		return nil
	}
	errRegistry.RLock()
	defer errRegistry.RUnlock()
	if ge.Sentinel != "" {
		return errRegistry.sentinels[ge.Sentinel]
	}
	t, ok := errRegistry.types[ge.Type]
	if !ok {
		return nil
	}
	p := reflect.New(t)
	if msgpack.Unmarshal(ge.Value, p.Interface()) != nil {
		return nil
	}
	e, _ := p.Elem().Interface().(error)
	return e
}
