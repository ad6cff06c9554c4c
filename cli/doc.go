// Package cli is the `shoal` command line: `shoal scheduler`, `shoal worker`, `shoal local`,
// `shoal status`, `shoal demo` and `shoal version`, each with --help.
//
// It is a package rather than only a command so that users can build their own binary with
// their own Go task functions: register them with worker.Register in the binary and call
// Main. Every process of a cluster (the scheduler validates Go function names against what
// workers register) should run the same binary.
package cli
