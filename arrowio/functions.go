package arrowio

import (
	"context"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Func is the signature of a built-in task function, the same as a worker's
// registered Go functions.
type Func = func(ctx context.Context, args []any) (any, error)

// Functions returns the built-in task functions, keyed by the name under
// which a worker registers them, allocating from memory.DefaultAllocator.
// See the package documentation for each function's arguments and result.
func Functions() map[string]Func {
	return FunctionsWithAllocator(memory.DefaultAllocator)
}

// FunctionsWithAllocator is Functions with the allocator the functions use
// for the tables they build.
func FunctionsWithAllocator(mem memory.Allocator) map[string]Func {
	o := op{mem: mem}
	return map[string]Func{
		"arrow_table":       arrowTable(mem),
		"arrow_bytes_table": arrowBytesTable(mem),
		"row_count":         o.rowCount,
		"concat":            o.concat,
		"sum_column":        o.sumColumn,
		"filter_gt":         o.filterGT,
		"project":           o.project,
		"hash_partition":    o.hashPartition,
		"groupby_sum":       o.groupbySum,
		"sort_by":           o.sortBy,
	}
}
