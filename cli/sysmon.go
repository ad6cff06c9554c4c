package cli

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// The Go runtime's monitor thread (sysmon) sleeps deeply while every P is idle, and the first
// system call after that wakes it and puts it back to polling every 20 µs for at least a
// millisecond. A worker (GOMAXPROCS 1) or scheduler moving tiny tasks goes idle and busy
// thousands of times a second, so its monitor never leaves that polling: in the million-task
// graph of benchmarks/million.py each worker's monitor woke ~4,500 times a second, at ~17 µs
// of CPU each on this machine's VM (a timer and two context switches), 16 % of the worker's
// CPU, and the scheduler's 11 % of a core. The runtime has one switch that keeps the monitor
// out of that deep sleep: GODEBUG=schedtrace, which makes it print the scheduler's state every
// so many milliseconds and so never sleep past a print. At its largest, 2^31-1 ms (24.8
// days): the first print is due when the machine's monotonic clock (time since boot) reaches
// that, so a process started on a host up for less prints nothing until then, and one started
// on a host up for longer prints one line ("SCHED 0ms: ...") at once; then one per 24.8 days.
// A fatal error (an unrecovered panic, SIGQUIT) also prints the scheduler's state, a line per
// thread and goroutine, before the usual traceback. Otherwise the monitor backs off to one
// wake-up per 10 ms once it has nothing to do, as it does while any P is busy. Measured: the
// workers' CPU fell by a quarter (docs/performance.md, "The Go runtime's monitor thread").
//
// Everything a binary runs before cli.Main (package init functions, a custom worker's main
// up to its call) runs again after the re-execution.
//
// The runtime reads schedtrace once, at start, so a long-running command re-executes itself
// with it (same process id, arguments and descriptors) unless GODEBUG names schedtrace
// already: GODEBUG=schedtrace=0 keeps the runtime's default behaviour. Once re-executed, the
// caller's GODEBUG is put back, so that the processes it starts (executors, a local cluster's
// workers, whatever tasks run) see the environment they were given.

// sysmonSetting is the GODEBUG setting a long-running command runs with.
const sysmonSetting = "schedtrace=2147483647"

// sysmonMarker carries the caller's GODEBUG across the re-execution: "=" and its value, or
// empty when it was unset.
const sysmonMarker = "SHOAL_CALLER_GODEBUG"

// keepSysmonAwake re-executes the process with sysmonSetting added to GODEBUG (it returns
// only if that is not needed, already done, or impossible), or, in the re-executed process,
// restores the caller's GODEBUG.
func keepSysmonAwake() {
	// (a marker only counts with the setting it came with: one inherited from elsewhere is
	// dropped, and the process re-executes as usual)
	if was, ok := os.LookupEnv(sysmonMarker); ok && strings.HasSuffix(os.Getenv("GODEBUG"), sysmonSetting) {
		os.Unsetenv(sysmonMarker)
		// (setting GODEBUG now changes none of the runtime's start-up settings, schedtrace
		// included: only the variables it documents as changeable at run time)
		if v, set := strings.CutPrefix(was, "="); set {
			os.Setenv("GODEBUG", v)
		} else {
			os.Unsetenv("GODEBUG")
		}
		return
	}
	env, ok := sysmonEnv(os.Environ())
	if !ok {
		return
	}
	exe, err := os.Executable()
	if err == nil {
		err = syscall.Exec(exe, os.Args, env) // returns only on failure
	}
	fmt.Fprintf(os.Stderr, "shoal: could not re-execute with GODEBUG=%s (%v): the Go runtime's monitor thread keeps its default, which costs CPU when tasks are tiny\n",
		sysmonSetting, err)
}

// sysmonEnv returns environ with sysmonSetting added to GODEBUG and the caller's GODEBUG kept
// in sysmonMarker, or false when GODEBUG names schedtrace already.
func sysmonEnv(environ []string) ([]string, bool) {
	out := make([]string, 0, len(environ)+2)
	godebug, set := "", false
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug, set = v, true
			continue
		}
		if strings.HasPrefix(kv, sysmonMarker+"=") {
			continue
		}
		out = append(out, kv)
	}
	for _, field := range strings.Split(godebug, ",") {
		if strings.HasPrefix(field, "schedtrace=") { // as the runtime reads it: no spaces
			return nil, false // the caller's choice
		}
	}
	was := ""
	if set {
		was = "=" + godebug
	}
	next := sysmonSetting
	if godebug != "" {
		next = godebug + "," + sysmonSetting
	}
	return append(out, "GODEBUG="+next, sysmonMarker+"="+was), true
}
