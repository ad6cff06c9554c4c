package cli

import (
	"fmt"
	"os"
)

var commands = []struct {
	name, summary string
	run           func(args []string) error
	serves        bool // runs a scheduler or a worker: keeps the runtime's monitor awake (sysmon.go)
}{
	{"scheduler", "run the scheduler (control :8786, gossip :7946, dashboard :8787)", runScheduler, true},
	{"worker", "run a worker that joins a cluster through any member's gossip address", runWorker, true},
	{"local", "run a scheduler and N worker processes on this machine", runLocal, true},
	{"status", "show a running cluster's workers", runStatus, false},
	{"demo", "run a demo graph (on a fresh local cluster, or on --scheduler)", runDemo, true},
	{"version", "print the version", runVersion, false},
}

func usage() {
	fmt.Fprintf(os.Stderr, "shoal — a dynamic task-graph scheduler\n\nUsage:\n  shoal <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'shoal <command> --help' for the flags of a command.\n")
}

// Main runs the shoal command line (scheduler, worker, local, status, demo, version) with the
// Go functions registered in this binary. A custom worker binary is:
//
//	func main() {
//		worker.Register("my_function", myFunction)
//		cli.Main()
//	}
func Main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	for _, c := range commands {
		if c.name == os.Args[1] {
			if c.serves {
				keepSysmonAwake()
			}
			if err := c.run(os.Args[2:]); err != nil {
				if err == errHelp {
					return
				}
				fmt.Fprintf(os.Stderr, "shoal %s: %v\n", c.name, err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "shoal: unknown command %q\n\n", os.Args[1])
	usage()
	os.Exit(2)
}

func runVersion(args []string) error {
	fs := newFlagSet("version", "", "Print the version of this binary and of the wire protocol.")
	if err := parse(fs, args); err != nil {
		return err
	}
	fmt.Printf("shoal %s (protocol %d)\n", version, protocolVersion)
	return nil
}
