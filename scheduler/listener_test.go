package scheduler

import (
	"os/exec"
	"strings"
	"testing"
)

// The scheduler publishes its own events (EventListener) and knows nothing of its observers:
// it must not depend on the dashboard, directly or through another package.
func TestSchedulerDoesNotImportTheDashboard(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command("go", "list", "-deps", "github.com/shoal-dev/shoal/scheduler").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 5 {
		t.Fatalf("go list -deps listed too little to be right: %q", deps)
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "github.com/shoal-dev/shoal/dashboard") || strings.HasPrefix(d, "github.com/shoal-dev/shoal/cli") {
			t.Errorf("scheduler depends on %s", d)
		}
	}
}

// A zero EventListener listens to nothing, and every helper copes with it.
func TestZeroListenerIsSilent(t *testing.T) {
	o := newObservers()
	w := &workerConn{}
	o.taskDone(w, "k", 0, 0, 0, 0, false)
	o.transfers(w, nil)
	o.workerJoined(w)
	o.workerLeft(w, "x")
	o.graphRejected(nil, nil)
}

// Active gates the high-volume events: an inactive listener gets no TaskRan.
func TestInactiveListenerGetsNoTaskEvents(t *testing.T) {
	o := newObservers()
	calls := 0
	o.l = EventListener{Active: func() bool { return false }, TaskRan: func(TaskRun) { calls++ }}
	o.taskDone(&workerConn{}, "k", 0, 0, 0, 0, false)
	if calls != 0 {
		t.Fatalf("TaskRan called %d times while inactive", calls)
	}
}
