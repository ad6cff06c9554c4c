package scheduler

import (
	"context"
	"errors"
	"fmt"

	"github.com/shoal-dev/shoal/internal/wire"
)

// CallStack asks the worker running key for its current call stack (the dashboard's Task
// view): the worker's data address and the stack's lines. A key that is not running has none
// (ErrNotRunning).
func (s *Server) CallStack(ctx context.Context, key string) (worker string, lines []string, err error) {
	var running bool
	err = s.QueryContext(ctx, func(c *Core) {
		ti, found := c.TaskInfo(key)
		if !found || ti.State != Processing {
			return
		}
		if w := s.workers.get(ti.Worker); w != nil {
			worker, running = w.info.Address, true
		}
	})
	if err != nil {
		return "", nil, err
	}
	if !running {
		return "", nil, ErrNotRunning
	}
	if s.cfg.TLS != nil {
		return worker, nil, errors.New("call stacks are read from the worker's data port, which this scheduler cannot dial with TLS: use Client.call_stack")
	}
	conn, err := wire.Dial(ctx, worker, wire.DialOptions{Role: wire.RoleClient, Token: s.cfg.Token, Limits: s.cfg.Limits})
	if err != nil {
		return worker, nil, fmt.Errorf("reaching worker %s: %w", worker, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Abort() })
	defer stop()
	if err := conn.Send(&wire.Msg{Op: wire.OpCallStack, ID: 1, Keys: []string{key}}); err != nil {
		return worker, nil, fmt.Errorf("asking worker %s: %w", worker, err)
	}
	m, _, err := conn.Recv()
	switch {
	case err != nil:
		return worker, nil, fmt.Errorf("asking worker %s: %w", worker, err)
	case m.Op == wire.OpError:
		return worker, nil, fmt.Errorf("worker %s: %s: %s", worker, m.Code, m.Message)
	}
	lines, ok := m.WhoHas[key]
	if !ok {
		return worker, nil, ErrNotRunning // it finished meanwhile
	}
	return worker, lines, nil
}

// ErrNotRunning: the task is not running now (queued, finished or unknown).
var ErrNotRunning = errors.New("the task is not running")
