package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
)

// DemoGraphs runs the demo's graphs (a sum tree of ntasks leaves and an Arrow pipeline) on the
// scheduler at addr and prints what they give. The stock binary sets it (cmd/shoal/demo.go):
// package cli cannot import the Go client, which imports cli so that one Go program can run
// as its own cluster (shoal.Main). A binary that leaves it unset has no demo.
var DemoGraphs = func(ctx context.Context, addr, token string, tlsConf *tls.Config, ntasks int) error {
	return errors.New("this binary has no demo graphs; run the stock shoal binary's demo")
}

func runDemo(args []string) error {
	var f localFlags
	var addr string
	var ntasks int
	fs := newFlagSet("demo", "", "Run a demo graph and print its results: a wide sum tree of Go tasks and an Arrow\npipeline whose tables move between workers. Without --scheduler it starts a local\ncluster for the run and stops it afterwards.")
	f.register(fs)
	for _, name := range []string{"port", "gossip-port", "dashboard-port"} {
		fs.Set(name, "0") // a demo never collides with a running cluster
	}
	fs.StringVar(&addr, "scheduler", "", "run on this existing scheduler instead of a fresh local cluster")
	fs.IntVar(&ntasks, "tasks", 10000, "number of leaf tasks in the sum tree")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	token, err := f.token()
	if err != nil {
		return err
	}
	if addr == "" {
		lc, err := startLocal(ctx, f)
		if err != nil {
			return err
		}
		defer lc.close()
		addr = lc.sched.srv.Addr()
		fmt.Printf("local cluster: scheduler %s, %d workers, dashboard %s\n", addr, f.workers, lc.sched.dashboard)
	}
	_, clientTLS, err := f.tlsConfigs()
	if err != nil {
		return err
	}
	return DemoGraphs(ctx, addr, token, clientTLS, ntasks)
}
