package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/arrowio"
)

// The built-in functions every worker registers. Arrow operators come from
// arrowio.Functions.
func init() {
	Register("noop", func(context.Context, []any) (any, error) { return nil, nil })
	Register("identity", builtinIdentity)
	Register("inc", builtinInc)
	Register("add", builtinAdd)
	Register("sum", builtinSum)
	Register("sleep", builtinSleep)
	Register("fail", builtinFail)
	Register("panic", builtinPanic)
	Register("bytes", builtinBytes)
	for name, fn := range arrowio.Functions() {
		Register(name, Func(fn))
	}
}

func wantArgs(name string, args []any, min, max int) error {
	if len(args) < min || len(args) > max {
		if min == max {
			return fmt.Errorf("%s takes %d argument(s), got %d", name, min, len(args))
		}
		return fmt.Errorf("%s takes %d to %d arguments, got %d", name, min, max, len(args))
	}
	return nil
}

func builtinIdentity(_ context.Context, args []any) (any, error) {
	if err := wantArgs("identity", args, 1, 1); err != nil {
		return nil, err
	}
	return args[0], nil
}

func builtinInc(_ context.Context, args []any) (any, error) {
	if err := wantArgs("inc", args, 1, 1); err != nil {
		return nil, err
	}
	return addNumbers(args[0], int64(1))
}

func builtinAdd(_ context.Context, args []any) (any, error) {
	if err := wantArgs("add", args, 2, 2); err != nil {
		return nil, err
	}
	return addNumbers(args[0], args[1])
}

// builtinSum adds its arguments, or the elements of a single list argument.
func builtinSum(_ context.Context, args []any) (any, error) {
	if len(args) == 1 {
		if xs, ok := args[0].([]any); ok {
			args = xs
		}
	}
	var acc any = int64(0)
	for i, x := range args {
		var err error
		if acc, err = addNumbers(acc, x); err != nil {
			return nil, fmt.Errorf("sum: element %d: %w", i, err)
		}
	}
	return acc, nil
}

// addNumbers adds two numbers: int64 when both are integers, float64 otherwise.
func addNumbers(a, b any) (any, error) {
	if IsInt(a) && IsInt(b) {
		x, err := Int64(a)
		if err != nil {
			return nil, err
		}
		y, err := Int64(b)
		if err != nil {
			return nil, err
		}
		return x + y, nil
	}
	x, err := Float64(a)
	if err != nil {
		return nil, err
	}
	y, err := Float64(b)
	if err != nil {
		return nil, err
	}
	return x + y, nil
}

// builtinSleep sleeps for args[0] seconds (honouring cancellation) and returns args[1], if
// given.
func builtinSleep(ctx context.Context, args []any) (any, error) {
	if err := wantArgs("sleep", args, 1, 2); err != nil {
		return nil, err
	}
	s, err := Float64(args[0])
	if err != nil {
		return nil, fmt.Errorf("sleep: %w", err)
	}
	t := time.NewTimer(time.Duration(s * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if len(args) == 2 {
		return args[1], nil
	}
	return nil, nil
}

func builtinFail(_ context.Context, args []any) (any, error) {
	msg := "fail called"
	if len(args) > 0 {
		msg = fmt.Sprint(args[0])
	}
	return nil, errors.New(msg)
}

func builtinPanic(_ context.Context, args []any) (any, error) {
	msg := "panic called"
	if len(args) > 0 {
		msg = fmt.Sprint(args[0])
	}
	panic(msg)
}

// maxBuiltinBytes bounds what the bytes built-in allocates.
const maxBuiltinBytes = 1 << 34

func builtinBytes(_ context.Context, args []any) (any, error) {
	if err := wantArgs("bytes", args, 1, 1); err != nil {
		return nil, err
	}
	n, err := Int64(args[0])
	if err != nil || n < 0 || n > maxBuiltinBytes {
		return nil, fmt.Errorf("bytes: want a size between 0 and %d, got %v", int64(maxBuiltinBytes), args[0])
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b, nil
}
