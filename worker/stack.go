package worker

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-dev/shoal/graph"
)

// Call stacks of running tasks (Client.call_stack, the dashboard's Task view). A Python
// executor registers faulthandler for SIGUSR2 at start, writing to stack-<pid>.txt in the
// worker's scratch directory: the C-level handler dumps every thread's Python stack at once,
// even while the task is inside C code. A Go task's stack is read from the goroutine profile:
// the goroutines running Go tasks (those under runGo).

// stackSignal asks an executor for its threads' stacks.
const stackSignal = syscall.SIGUSR2

// stackFile is where executor pid writes its stacks.
func (w *Worker) stackFile(pid int) string {
	return filepath.Join(w.scratch.path, fmt.Sprintf("stack-%d.txt", pid))
}

// CallStacks returns the current call stack of each of keys that runs here now (keys not
// running are left out).
func (w *Worker) CallStacks(keys []string) map[string][]string {
	w.stackMu.Lock() // one dump at a time: the executors' files are shared
	defer w.stackMu.Unlock()
	out := map[string][]string{}
	var goKeys []string
	for _, k := range keys {
		w.mu.Lock()
		ts := w.mu.tasks[k]
		running := ts != nil && ts.state == stateRunning
		var kind graph.Kind
		var pid int
		if running {
			kind, pid = ts.t.Kind, int(ts.execPID.Load())
		}
		w.mu.Unlock()
		switch {
		case !running:
		case kind == graph.KindPy && pid > 0:
			out[k] = w.pythonStack(pid)
		case kind != graph.KindPy:
			goKeys = append(goKeys, k)
		}
	}
	if len(goKeys) > 0 {
		st := goTaskStacks()
		for _, k := range goKeys {
			out[k] = st
		}
	}
	return out
}

// pythonStack signals executor pid and reads what its faulthandler wrote.
func (w *Worker) pythonStack(pid int) []string {
	path := w.stackFile(pid)
	if err := os.Truncate(path, 0); err != nil {
		return []string{fmt.Sprintf("the executor (pid %d) keeps no stack file: %v", pid, err)}
	}
	if err := syscall.Kill(pid, stackSignal); err != nil {
		return []string{fmt.Sprintf("cannot signal the executor (pid %d): %v", pid, err)}
	}
	var last int64 = -1
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		st, err := os.Stat(path)
		if err != nil {
			break
		}
		if st.Size() > 0 && st.Size() == last { // written, and no longer growing
			break
		}
		last = st.Size()
	}
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return []string{fmt.Sprintf("the executor (pid %d) wrote no stack within a second", pid)}
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

// goTaskStacks returns the stacks of the goroutines running Go tasks.
func goTaskStacks() []string {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	var out []string
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, "shoal/worker.(*Worker).runGo") {
			out = append(out, strings.Split(strings.TrimRight(g, "\n"), "\n")...)
			out = append(out, "")
		}
	}
	if len(out) == 0 {
		return []string{"no Go task is running"}
	}
	return out[:len(out)-1]
}
