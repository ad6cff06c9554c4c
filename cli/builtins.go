package cli

import (
	"context"
	"os"
	"reflect"
	"syscall"

	"github.com/shoal-dev/shoal/worker"
)

// Functions the stock binary adds to worker's built-ins: ones that make failures on purpose,
// for tests, demos and failure drills.
func init() {
	// crash kills the worker process with SIGKILL, as the OOM killer would.
	worker.Register("crash", func(ctx context.Context, args []any) (any, error) {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	})
	// exit ends the worker process with the given exit code (default 3).
	worker.Register("exit", func(ctx context.Context, args []any) (any, error) {
		code := 3
		if len(args) > 0 {
			if v := reflect.ValueOf(args[0]); v.CanInt() {
				code = int(v.Int())
			} else if v.CanUint() {
				code = int(v.Uint())
			}
		}
		os.Exit(code)
		return nil, nil
	})
}
