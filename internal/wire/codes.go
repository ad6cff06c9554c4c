package wire

// Stable error codes (docs/protocol.md §5). Clients map them to exception classes.
const (
	CodeProtocol          = "protocol-error"
	CodeFrameTooLarge     = "frame-too-large"
	CodeUnknownOp         = "unknown-op"
	CodeBadMagic          = "bad-magic"
	CodeBadVersion        = "bad-version"
	CodeAuthFailed        = "auth-failed"
	CodeBadRole           = "bad-role"
	CodeBusy              = "busy" // too many connections of a role; try again later
	CodeGraphCycle        = "graph-cycle"
	CodeMissingDependency = "missing-dependency"
	CodeUnknownFunction   = "unknown-function"
	CodeKeyConflict       = "key-conflict"
	CodeInvalidTask       = "invalid-task"
	CodeTaskError         = "task-error"
	CodeTaskPanic         = "task-panic"
	CodeExecutorDied      = "executor-died"
	CodeKilledWorker      = "killed-worker"
	CodeCancelled         = "cancelled"
	CodeLost              = "lost"
	CodeFetchFailed       = "fetch-failed" // a dependency could not be fetched after repeated tries
	CodeDuplicateWorker   = "duplicate-worker"
	CodeLimit             = "limit-exceeded" // a request would exceed a documented bound (shared state)
)

// Error is an error as it travels on the wire: a stable code plus what a user needs to see.
type Error struct {
	Code      string `msgpack:"code"`
	Type      string `msgpack:"type,omitempty"`
	Message   string `msgpack:"message"`
	Traceback string `msgpack:"traceback,omitempty"`
	Exc       []byte `msgpack:"exc,omitempty"` // a pickled Python exception (never unpickled in Go), or a registered Go error (docs/protocol.md §3.1)
}

func (e *Error) Error() string {
	if e.Type != "" {
		return e.Code + ": " + e.Type + ": " + e.Message
	}
	return e.Code + ": " + e.Message
}

// Errorf builds an Error with a code.
func Errorf(code, msg string) *Error { return &Error{Code: code, Message: msg} }
