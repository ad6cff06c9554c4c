package shoal

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/shoal-dev/shoal/worker"
)

// Tasks that submit tasks, from Go: a registered function gets a client from its context and
// submits Go or Python tasks with it, seceding while it waits on them (as Python's
// get_client and secede do).
//
//	var Fib = shoal.Func("fib", func(ctx context.Context, n int64) (int64, error) {
//		if n < 2 {
//			return n, nil
//		}
//		c, err := shoal.TaskClient(ctx)
//		...
//		g := shoal.NewGraph()
//		a, b := Fib.Call(g, shoal.Lit(n-1)), Fib.Call(g, shoal.Lit(n-2))
//		fa, _ := shoal.Submit(ctx, c, g, a)
//		fb, _ := shoal.Submit(ctx, c, g, b)
//		shoal.Secede(ctx)
//		...
//	})

// ErrNotInTask is returned by TaskClient outside a task running on a worker.
var ErrNotInTask = errors.New("shoal: not called from a task running on a worker")

// taskClients holds one client per scheduler address for the tasks of this worker process.
var taskClients struct {
	sync.Mutex
	m map[string]*Client
}

// TaskClient returns the client the tasks of this worker process share (one connection,
// made on first use) to submit tasks from a task. It fails outside a task.
func TaskClient(ctx context.Context) (*Client, error) {
	env, ok := worker.TaskEnvFrom(ctx)
	if !ok {
		return nil, ErrNotInTask
	}
	if env.Scheduler == "" {
		return nil, errors.New("shoal: TaskClient: the worker does not know its scheduler yet")
	}
	taskClients.Lock()
	defer taskClients.Unlock()
	if c := taskClients.m[env.Scheduler]; c != nil && !c.closed() {
		return c, nil
	}
	c, err := Connect(context.WithoutCancel(ctx), env.Scheduler, Options{Token: env.Token, TLS: env.TLS})
	if err != nil {
		return nil, fmt.Errorf("shoal: TaskClient: %w", err)
	}
	if taskClients.m == nil {
		taskClients.m = map[string]*Client{}
	}
	taskClients.m[env.Scheduler] = c
	return c, nil
}

// Secede gives the calling task's thread back to its worker while it waits on tasks it
// submitted (another thread takes its place, and the scheduler stops counting it against
// the worker's threads). Outside a task it does nothing; later calls do nothing either.
func Secede(ctx context.Context) {
	if env, ok := worker.TaskEnvFrom(ctx); ok {
		env.Secede()
	}
}

// closed tells whether the connection to the scheduler has ended.
func (c *Client) closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.err != nil
}
