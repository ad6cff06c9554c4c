// Package proc starts Shoal processes for benchmarks and reads their resource use from /proc.
package proc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process in its own process group, killed with it if we die.
type Proc struct {
	Cmd  *exec.Cmd
	Addr string // the scheduler's control address
	Dir  string // a private temporary directory
	out  *os.File
}

// Pid is the child's process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Log is what the child printed so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "out.log"))
	return string(b)
}

func start(bin string, args []string) (*Proc, error) {
	dir, err := os.MkdirTemp("", "shoal-bench-")
	if err != nil {
		return nil, err
	}
	out, err := os.Create(filepath.Join(dir, "out.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	return &Proc{Cmd: cmd, Dir: dir, out: out}, nil
}

// StartLocal runs `shoal local` (a scheduler in that process and worker child processes) on
// free ports and waits until every worker registered.
func StartLocal(ctx context.Context, bin string, workers, nthreads int, memLimit string, extra ...string) (*Proc, error) {
	ready := ""
	args := []string{"local", "--workers", strconv.Itoa(workers), "--nthreads", strconv.Itoa(nthreads),
		"--memory-limit", memLimit, "--port", "0", "--gossip-port", "0", "--dashboard-port", "-1",
		"--log-level", "warn"}
	dir, err := os.MkdirTemp("", "shoal-bench-ready-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ready = filepath.Join(dir, "ready.json")
	args = append(append(args, "--ready-file", ready), extra...)
	p, err := start(bin, args)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(ready); err == nil {
			var info struct {
				Scheduler string `json:"scheduler"`
			}
			if json.Unmarshal(b, &info) == nil && info.Scheduler != "" {
				p.Addr = info.Scheduler
				return p, nil
			}
		}
		if err := ctx.Err(); err != nil || time.Now().After(deadline) || exited(p) {
			log := p.Log()
			p.Stop()
			return nil, fmt.Errorf("shoal local did not become ready (%v):\n%s", err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var schedAt = regexp.MustCompile(`scheduler at ([^\s,]+)`)

// StartScheduler runs `shoal scheduler` on free ports and waits for its address.
func StartScheduler(ctx context.Context, bin string, extra ...string) (*Proc, error) {
	args := append([]string{"scheduler", "--port", "0", "--gossip-port", "0", "--dashboard-port", "-1",
		"--log-level", "warn"}, extra...)
	p, err := start(bin, args)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := schedAt.FindStringSubmatch(p.Log()); m != nil {
			p.Addr = m[1]
			return p, nil
		}
		if err := ctx.Err(); err != nil || time.Now().After(deadline) || exited(p) {
			log := p.Log()
			p.Stop()
			return nil, fmt.Errorf("shoal scheduler did not start (%v):\n%s", err, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exited(p *Proc) bool {
	return syscall.Kill(p.Pid(), 0) != nil || State(p.Pid()) == "Z"
}

// Stop sends SIGTERM to the process group, waits up to 15 s, then SIGKILLs what is left.
func (p *Proc) Stop() {
	pg := p.Pid()
	syscall.Kill(-pg, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		syscall.Kill(-pg, syscall.SIGKILL)
		<-done
	}
	// workers of `shoal local` are in the same group; make sure none is left behind
	for i := 0; i < 100 && len(GroupMembers(pg)) > 0; i++ {
		if i == 50 {
			syscall.Kill(-pg, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.out.Close()
	os.RemoveAll(p.Dir)
}

// stat returns the fields of /proc/pid/stat after the command name (field 3 onwards).
func stat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// State is the one-letter process state ("" when gone).
func State(pid int) string {
	f := stat(pid)
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// CPUSeconds is utime+stime of the process (not its children), from /proc/pid/stat.
func CPUSeconds(pid int) float64 {
	f := stat(pid)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14
	st, _ := strconv.ParseFloat(f[12], 64) // field 15
	return (ut + st) / clkTck
}

const clkTck = 100 // USER_HZ on Linux

// RSS is the resident set size of the process in bytes (VmRSS).
func RSS(pid int) int64 {
	fh, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer fh.Close()
	return parseKB(fh, "VmRSS:")
}

// HWM is the peak resident set size of the process in bytes (VmHWM), kept by the kernel.
func HWM(pid int) int64 {
	fh, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer fh.Close()
	return parseKB(fh, "VmHWM:")
}

func parseKB(r io.Reader, field string) int64 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// GroupMembers lists live processes of process group pg.
func GroupMembers(pg int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := stat(pid)
		if len(f) > 3 && f[0] != "Z" && f[2] == strconv.Itoa(pg) {
			out = append(out, pid)
		}
	}
	return out
}

// Sampler records the peak RSS of one process every interval until stopped.
type Sampler struct {
	pid  int
	mu   sync.Mutex
	peak int64
	stop chan struct{}
	done chan struct{}
}

// Sample starts sampling pid.
func Sample(pid int, every time.Duration) *Sampler {
	s := &Sampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.take()
			select {
			case <-s.stop:
				s.take()
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *Sampler) take() {
	r := RSS(s.pid)
	s.mu.Lock()
	s.peak = max(s.peak, r)
	s.mu.Unlock()
}

// Stop ends sampling and returns the peak.
func (s *Sampler) Stop() int64 {
	close(s.stop)
	<-s.done
	return s.peak
}

// ErrTimeout is returned when a run exceeds its deadline.
var ErrTimeout = errors.New("benchmark run timed out")
