package wire

import (
	"sync"

	"github.com/shoal-dev/shoal/graph"
)

// Ops, as listed in docs/protocol.md §3.
const (
	OpError = "error"
	// client ⇄ scheduler
	OpWelcome       = "welcome"
	OpUpdateGraph   = "update_graph"
	OpGraphRejected = "graph_rejected"
	OpWanted        = "wanted"
	OpFireAndForget = "fire_and_forget"
	OpReleaseKeys   = "release_keys"
	OpCancelKeys    = "cancel_keys"
	OpScatter       = "scatter"
	OpKeyState      = "key_state"
	OpInfo          = "info"
	OpInfoReply     = "info_reply"
	OpWhoHas        = "who_has"
	OpWhoHasReply   = "who_has_reply"
	// cluster control (client → scheduler, answered with ok or error by id)
	OpRestart       = "restart"
	OpRetireWorkers = "retire_workers"
	OpReplicate     = "replicate"
	OpRebalance     = "rebalance"
	OpScale         = "scale"
	OpProcessing    = "processing"
	OpGetLogs       = "get_logs" // also served on a worker's data port
	OpStory         = "story"
	OpCallStack     = "call_stack"  // a worker's data port: stacks of running tasks
	OpTaskStream    = "task_stream" // recording of task runs and memory, for reports
	OpProfile       = "profile"     // the statistical profiler: enable, disable, read
	OpOK            = "ok"
	OpResume        = "resume"  // a reconnecting client takes its previous id back and re-wants its keys
	OpResumed       = "resumed" // the id now in effect
	// shared state (client → scheduler, answered with ok or error by id; docs/protocol.md §3.2)
	OpVariableSet      = "variable_set"
	OpVariableGet      = "variable_get"
	OpVariableDelete   = "variable_delete"
	OpQueuePut         = "queue_put"
	OpQueueGet         = "queue_get"
	OpQueueSize        = "queue_qsize"
	OpSemaphoreAcquire = "semaphore_acquire"
	OpSemaphoreRelease = "semaphore_release"
	OpSemaphoreRefresh = "semaphore_refresh" // not answered
	OpSemaphoreValue   = "semaphore_value"
	OpEventSet         = "event_set"
	OpEventClear       = "event_clear"
	OpEventWait        = "event_wait"
	OpPublish          = "publish_dataset"
	OpUnpublish        = "unpublish_dataset"
	OpGetDataset       = "get_dataset"
	OpListDatasets     = "list_datasets"
	// worker ⇄ scheduler
	OpRegister      = "register"
	OpRegistered    = "registered"
	OpCompute       = "compute"
	OpTaskFinished  = "task_finished"
	OpTaskErred     = "task_erred"
	OpFreeKeys      = "free_keys"
	OpStealRequest  = "steal_request"
	OpStealResponse = "steal_response"
	OpAddKeys       = "add_keys"
	OpMissingData   = "missing_data"
	OpHeartbeat     = "heartbeat"
	OpReschedule    = "reschedule"
	OpGoodbye       = "goodbye"
	OpClose         = "close"
	OpPeerGone      = "peer_gone"
	OpLongRunning   = "long_running" // a task seceded from its thread (W→S)
	OpAcquire       = "acquire_replicas"
	OpPreload       = "preload" // client → scheduler → worker → executor
	// OpProfileSamples: a worker's aggregated call-stack samples (W→S, Samples); the
	// scheduler turns sampling on and off with OpProfile (S→W, N 1 or 0).
	OpProfileSamples = "profile_samples"
	// data port
	OpGetData = "get_data"
	OpData    = "data"
	OpPutData = "put_data"
	OpPutOK   = "put_ok"
	// worker ⇄ executor
	OpReady    = "ready"
	OpRun      = "run"
	OpDone     = "done"
	OpShutdown = "shutdown"
	OpRuns     = "runs"     // W→E: several runs in one message (docs/protocol.md §3.5)
	OpDones    = "dones"    // E→W: several answers in one message
	OpSecede   = "secede"   // E→W: the running task gives its thread back, passing the socket it answers on
	OpRejoin   = "rejoin"   // E→W on the task's socket: it wants a thread again (reserved)
	OpRejoined = "rejoined" // W→E: it has one
)

// StateUnhealthy in a heartbeat's state says the worker cannot serve now (Reason says why).
const StateUnhealthy = "unhealthy"

// Value encodings (docs/protocol.md §3.1).
const (
	EncMsgpack = "msgpack"
	EncArrow   = "arrow"
	EncPickle  = "pickle"
	EncBytes   = "bytes"
)

// ProfileItem is Count samples of one call stack (frames outermost first, joined by ";")
// taken while a task of Group ran.
type ProfileItem struct {
	Group string `msgpack:"group"`
	Stack string `msgpack:"stack"`
	Count int64  `msgpack:"count"`
}

// Item describes one value carried in a message; its NFrames payload frames follow in order.
type Item struct {
	Key      string `msgpack:"key"`
	Encoding string `msgpack:"encoding"`
	NFrames  int    `msgpack:"nframes,omitempty"`
	NBytes   int64  `msgpack:"nbytes,omitempty"`
}

// Dep tells a worker where a dependency of a compute task lives.
type Dep struct {
	Key    string   `msgpack:"key"`
	WhoHas []string `msgpack:"who_has"`
	NBytes int64    `msgpack:"nbytes,omitempty"`
}

// WorkerInfo describes a worker to clients (info_reply) and the dashboard.
type WorkerInfo struct {
	Name        string  `msgpack:"name" json:"name"`
	Address     string  `msgpack:"address" json:"address"`
	NThreads    int     `msgpack:"nthreads" json:"nthreads"`
	MemoryLimit int64   `msgpack:"memory_limit" json:"memory_limit"`
	Memory      int64   `msgpack:"memory" json:"memory"`
	Spilled     int64   `msgpack:"spilled" json:"spilled"`
	Executing   int     `msgpack:"executing" json:"executing"`
	Ready       int     `msgpack:"ready" json:"ready"`
	CPU         float64 `msgpack:"cpu" json:"cpu"`
	BytesSent   int64   `msgpack:"bytes_sent" json:"bytes_sent"`
	BytesRecv   int64   `msgpack:"bytes_received" json:"bytes_received"`
	// ProcessMemory is the resident memory of the worker process and its Python executors
	// (0: not reported); the dashboard shows what exceeds the managed bytes as unmanaged.
	ProcessMemory int64              `msgpack:"process_memory,omitempty" json:"process_memory,omitempty"`
	Resources     map[string]float64 `msgpack:"resources,omitempty" json:"resources,omitempty"`
	LastSeen      float64            `msgpack:"last_seen" json:"last_seen"`
	PID           int                `msgpack:"pid,omitempty" json:"pid,omitempty"`
}

// Msg is the header (frame 0) of every message: one flat struct whose fields are the union of
// all ops' fields, so a header is decoded once, without a second pass per op. Which fields an
// op uses is listed in docs/protocol.md; unused fields are omitted on the wire.
type Msg struct {
	Op string `msgpack:"op"`
	ID uint64 `msgpack:"id,omitempty"`

	// errors
	Code    string `msgpack:"code,omitempty"`
	Message string `msgpack:"message,omitempty"`
	Error   *Error `msgpack:"error,omitempty"`

	// identity
	Client    int64  `msgpack:"client,omitempty"`
	WorkerID  int64  `msgpack:"worker_id,omitempty"`
	Version   string `msgpack:"version,omitempty"`
	Dashboard string `msgpack:"dashboard,omitempty"`
	Scheduler string `msgpack:"scheduler,omitempty"`
	Name      string `msgpack:"name,omitempty"`
	DataAddr  string `msgpack:"data_addr,omitempty"`
	PID       int    `msgpack:"pid,omitempty"`
	Python    string `msgpack:"python,omitempty"`
	Reason    string `msgpack:"reason,omitempty"`

	// graphs and keys
	Tasks   []graph.Task        `msgpack:"tasks,omitempty"`
	Funcs   map[string][]byte   `msgpack:"funcs,omitempty"`
	Wanted  []string            `msgpack:"wanted,omitempty"`
	Keys    []string            `msgpack:"keys,omitempty"`
	Missing []string            `msgpack:"missing,omitempty"`
	Key     string              `msgpack:"key,omitempty"`
	State   string              `msgpack:"state,omitempty"`
	Worker  string              `msgpack:"worker,omitempty"` // a worker's data address
	Items   []Item              `msgpack:"items,omitempty"`
	Running []string            `msgpack:"running,omitempty"` // register: tasks still running there
	Seceded []string            `msgpack:"seceded,omitempty"` // register: those of them that seceded
	WhoHas  map[string][]string `msgpack:"who_has,omitempty"`
	Workers []WorkerInfo        `msgpack:"workers,omitempty"`

	// compute / run
	Task *graph.Task `msgpack:"task,omitempty"`
	// TaskID is the scheduler's handle of the task in compute; the worker echoes it in
	// task_finished / task_erred so the scheduler can find the task without a key lookup.
	TaskID   uint64 `msgpack:"tid,omitempty"`
	FuncHash string `msgpack:"func,omitempty"`
	FuncData []byte `msgpack:"func_data,omitempty"`
	Payload  []byte `msgpack:"payload,omitempty"`
	Deps     []Dep  `msgpack:"deps,omitempty"`
	Order    int64  `msgpack:"order,omitempty"`

	// results and load
	NBytes    int64              `msgpack:"nbytes,omitempty"`
	Encoding  string             `msgpack:"encoding,omitempty"`
	Start     int64              `msgpack:"start,omitempty"`
	Stop      int64              `msgpack:"stop,omitempty"`
	Thread    int                `msgpack:"thread,omitempty"`
	Accepted  bool               `msgpack:"accepted,omitempty"`
	Keep      bool               `msgpack:"keep,omitempty"` // compute: the result has dependents; its executor may keep it
	NThreads  int                `msgpack:"nthreads,omitempty"`
	MemLimit  int64              `msgpack:"memory_limit,omitempty"`
	Memory    int64              `msgpack:"memory,omitempty"`
	Spilled   int64              `msgpack:"spilled,omitempty"`
	Executing int                `msgpack:"executing,omitempty"`
	Ready     int                `msgpack:"ready,omitempty"`
	CPU       float64            `msgpack:"cpu,omitempty"`
	BytesSent int64              `msgpack:"bytes_sent,omitempty"`
	BytesRecv int64              `msgpack:"bytes_received,omitempty"`
	ProcMem   int64              `msgpack:"process_memory,omitempty"` // heartbeat: resident bytes of the worker and its executors
	Interval  float64            `msgpack:"interval,omitempty"`       // heartbeat (S→W): seconds between heartbeats the scheduler asks for
	Resources map[string]float64 `msgpack:"resources,omitempty"`
	Functions []string           `msgpack:"functions,omitempty"`

	// cluster control
	N     int64    `msgpack:"n,omitempty"`     // replicate: copies; scale: workers; get_logs: lines
	Addrs []string `msgpack:"addrs,omitempty"` // worker data addresses (retire_workers, processing)
	Work  float64  `msgpack:"work,omitempty"`  // info_reply: expected seconds of the pending tasks (N)

	// profiler
	Samples []ProfileItem `msgpack:"samples,omitempty"` // profile_samples

	// shared state
	Timeout      float64 `msgpack:"timeout,omitempty"`       // seconds to wait; 0: do not wait; < 0: no limit
	LeaseTimeout float64 `msgpack:"lease_timeout,omitempty"` // semaphore_acquire: seconds a lease lives unrefreshed
}

// msgPool recycles headers: a Msg is large (every op's fields), and a busy scheduler decodes
// one per task_finished. Only callers that call ReleaseMsg return them; others just allocate.
var msgPool = sync.Pool{New: func() any { return new(Msg) }}

// ReleaseMsg gives m back for reuse by a later DecodeHeader (Recv). The caller must hold no
// pointer to m afterwards; the strings, slices and maps m referred to are not reused and stay
// valid.
func ReleaseMsg(m *Msg) {
	*m = Msg{}
	msgPool.Put(m)
}

// AcquireMsg is a zeroed Msg from the pool ReleaseMsg fills, for a hand-written decoder.
func AcquireMsg() *Msg { return msgPool.Get().(*Msg) }

var taskPool = sync.Pool{New: func() any { return new(graph.Task) }}

// ReleaseTask gives back a compute's decoded Task (Msg.Task) once the caller copied what it
// needs: as ReleaseMsg, the caller must hold no pointer to t afterwards, and the strings,
// slices and maps t referred to stay valid. nil is ignored.
func ReleaseTask(t *graph.Task) {
	if t == nil {
		return
	}
	*t = graph.Task{}
	taskPool.Put(t)
}

// EncodeHeader encodes m as a msgpack map holding the fields that are set.
func EncodeHeader(m *Msg) ([]byte, error) { return appendHeader(make([]byte, 0, 128), m) }

// AppendHeader is EncodeHeader appending to b.
func AppendHeader(b []byte, m *Msg) ([]byte, error) { return appendHeader(b, m) }

// Ops lists every op of docs/protocol.md §3.
var Ops = []string{OpError, OpWelcome, OpUpdateGraph, OpGraphRejected, OpWanted, OpFireAndForget, OpReleaseKeys,
	OpCancelKeys, OpScatter, OpKeyState, OpInfo, OpInfoReply, OpWhoHas, OpWhoHasReply,
	OpResume, OpResumed, OpRestart, OpRetireWorkers, OpReplicate, OpRebalance, OpScale, OpProcessing, OpGetLogs, OpStory, OpCallStack, OpTaskStream, OpProfile, OpOK,
	OpVariableSet, OpVariableGet, OpVariableDelete, OpQueuePut, OpQueueGet, OpQueueSize, OpSemaphoreAcquire,
	OpSemaphoreRelease, OpSemaphoreRefresh, OpSemaphoreValue, OpEventSet, OpEventClear, OpEventWait, OpPublish,
	OpUnpublish, OpGetDataset, OpListDatasets, OpRegister,
	OpRegistered, OpCompute, OpTaskFinished, OpTaskErred, OpFreeKeys, OpStealRequest,
	OpStealResponse, OpAddKeys, OpMissingData, OpHeartbeat, OpReschedule, OpGoodbye, OpClose, OpPeerGone, OpAcquire, OpPreload, OpLongRunning, OpProfileSamples,
	OpGetData, OpData, OpPutData, OpPutOK, OpReady, OpRun, OpRuns, OpDone, OpDones, OpShutdown,
	OpSecede, OpRejoin, OpRejoined}
