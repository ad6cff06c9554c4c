// Package arrowio moves Arrow tables between Shoal processes and provides
// the built-in Arrow task functions that every worker registers.
//
// # Transfer
//
// A value with encoding "arrow" is one Arrow IPC stream (schema, record
// batches, end-of-stream), see docs/protocol.md. EncodeTable and
// EncodeRecord produce it in memory, copying the column buffers once;
// WriteTable streams it to an io.Writer batch by batch (spilling, sending
// on a connection). DecodeTable turns received bytes back into a table
// without copying: the table's buffers are sub-slices of the input, so
// the caller must not reuse or modify the input while the table lives.
// ReadTable reads from an io.Reader and copies. Both decoders reject
// malformed input with an error wrapping ErrInvalidStream and never panic.
//
// # Ownership
//
// Tables follow arrow-go's reference counting. Every function here that
// returns an arrow.Table returns a new reference the caller must Release.
// Tables passed as arguments are borrowed: a function never releases them,
// and may return a table sharing their buffers (project, concat), which
// holds its own references.
//
// # Built-in functions
//
// Functions returns these, by name. Arguments are positional and arrive
// as msgpack decodes them: integers of any Go integer type (and integral
// floats) are accepted where an integer is expected. A table argument is
// an arrow.Table (an arrow.RecordBatch is accepted too). A wrong argument
// gives an error wrapping ErrBadArgs that names the function and argument.
//
//	arrow_table(nrows, [seed], [partition])   → table of GeneratedSchema
//	arrow_bytes_table(nbytes, [seed])         → table of BytesSchema, ~nbytes of float64
//	row_count(table)                          → int64
//	concat(table, table, ...) or concat([tables]) → table (schemas must be equal)
//	sum_column(table, column)                 → float64 (nulls skipped)
//	filter_gt(table, column, value)           → table of rows with column > value
//	project(table, [columns])                 → table of those columns, in that order
//	hash_partition(table, column, nparts, i)  → table of rows in partition i (see HashPartition)
//	groupby_sum(table, key, value)            → table (key, sum) ordered by key
//	sort_by(table, column, [ascending])       → table sorted stably, nulls last
//
// The operators handle integer, unsigned, float and string columns as keys
// or values; when they move whole rows (filter, partition, sort) every
// fixed-width, boolean, string and binary column is carried along, and
// other types (lists, structs, dictionaries) give ErrUnsupportedType.
package arrowio
