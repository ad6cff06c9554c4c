package cli

import (
	"context"
	"fmt"
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
	// checkbytes checks a value made by the built-in bytes (byte i is i mod 256) and returns its
	// length: it proves a large value arrived whole.
	worker.Register("checkbytes", func(ctx context.Context, args []any) (any, error) {
		if len(args) != 1 {
			return nil, fmt.Errorf("checkbytes takes 1 argument, got %d", len(args))
		}
		b, ok := args[0].([]byte)
		if !ok {
			return nil, fmt.Errorf("checkbytes: want bytes, got %T", args[0])
		}
		for i, c := range b {
			if c != byte(i) {
				return nil, fmt.Errorf("checkbytes: byte %d is %d, want %d", i, c, byte(i))
			}
		}
		return int64(len(b)), nil
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
