package scheduler

import "fmt"

// State is where a task is in its life, ordered roughly by progress.
type State uint8

// Task states. See doc.go for the diagram.
const (
	Released   State = iota // known, not needed now, no data
	Waiting                 // needed; waiting for dependencies to be in memory (or about to be placed)
	Queued                  // ready, withheld by the scheduler (root-task queueing or resources)
	NoWorker                // ready, but no worker satisfies its restrictions
	Processing              // sent to a worker
	Memory                  // the result is on at least one worker
	Erred                   // failed, or a dependency failed
	Forgotten               // removed; its id may be reused
	NumStates  = int(Forgotten) + 1
)

var stateNames = [NumStates]string{"released", "waiting", "queued", "no-worker", "processing", "memory", "erred", "forgotten"}

func (s State) String() string {
	if int(s) < NumStates {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ParseState is the inverse of State.String.
func ParseState(s string) (State, bool) {
	for i, n := range stateNames {
		if n == s {
			return State(i), true
		}
	}
	return 0, false
}

// active states hold their dependencies: a dependency is kept while a dependent in one of
// these states may still read it.
func (s State) active() bool { return s >= Waiting && s <= Processing }

// legal lists every allowed edge of the state machine; setState panics on any other.
var legal = func() (m [NumStates][NumStates]bool) {
	for _, e := range [][2]State{
		{Released, Waiting}, {Released, Memory}, {Released, Forgotten},
		{Waiting, Queued}, {Waiting, NoWorker}, {Waiting, Processing}, {Waiting, Memory},
		{Waiting, Released}, {Waiting, Erred},
		{Queued, Processing}, {Queued, Waiting}, {Queued, NoWorker}, {Queued, Memory},
		{Queued, Released}, {Queued, Erred},
		{NoWorker, Waiting}, {NoWorker, Memory}, {NoWorker, Released}, {NoWorker, Erred},
		{Processing, Memory}, {Processing, Erred}, {Processing, Waiting}, {Processing, Released},
		{Memory, Released}, {Memory, Waiting}, {Memory, Erred},
		{Erred, Released},
	} {
		m[e[0]][e[1]] = true
	}
	return m
}()

// IllegalTransition is the panic value of an illegal edge: a bug in the core.
type IllegalTransition struct {
	Key      string
	From, To State
}

func (e IllegalTransition) Error() string {
	return fmt.Sprintf("scheduler: illegal transition %s → %s for task %q", e.From, e.To, e.Key)
}

// Story is one recorded transition of a task.
type Story struct {
	Seq      uint64 // the id of the event that caused it (Stats().Events at the time)
	Event    string // that event's name, e.g. "task-finished"
	From, To State
}

func (s Story) String() string { return fmt.Sprintf("#%d %s %s→%s", s.Seq, s.Event, s.From, s.To) }

// event codes recorded in stories (index into eventNames).
const (
	evNone uint8 = iota
	evWorkerJoined
	evWorkerLeft
	evClientJoined
	evClientLeft
	evUpdateGraph
	evWanted
	evReleaseKeys
	evCancelKeys
	evScattered
	evTaskFinished
	evTaskErred
	evAddReplica
	evMissingData
	evStealResponse
	evReschedule
	evHeartbeat
	evTick
	evRestart
	evRetire
	evReplicate
	evRebalance
	evLongRunning
	evDispatch
)

var eventNames = [...]string{"", "worker-joined", "worker-left", "client-joined", "client-left",
	"update-graph", "wanted", "release-keys", "cancel-keys", "scattered", "task-finished",
	"task-erred", "add-replica", "missing-data", "steal-response", "reschedule", "heartbeat", "tick",
	"restart", "retire", "replicate", "rebalance", "long-running", "dispatch"}

// packStory encodes one story entry in 64 bits: seq (40) | event (8) | from (8) | to (8).
func packStory(seq uint64, ev uint8, from, to State) uint64 {
	return seq<<24 | uint64(ev)<<16 | uint64(from)<<8 | uint64(to)
}

func unpackStory(v uint64) Story {
	return Story{Seq: v >> 24, Event: eventNames[uint8(v>>16)], From: State(v >> 8), To: State(v)}
}
