package shoal_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	shoal "github.com/shoal-dev/shoal/clients/go"
)

// The tests run against real clusters made of this test binary: TestMain calls shoal.Main
// first, so the processes NewLocalCluster starts become the scheduler and workers, with the
// functions this package declares.
func TestMain(m *testing.M) {
	shoal.Main()
	code := m.Run()
	if shared.cluster != nil {
		shared.cluster.Close()
	}
	os.Exit(code)
}

// shared is one cluster (2 workers, 2 threads each) for the tests that need no cluster of
// their own, started by the first of them.
var shared struct {
	once    sync.Once
	cluster *shoal.LocalCluster
	err     error
}

func sharedClient(t testing.TB) *shoal.Client {
	t.Helper()
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var opts []shoal.ClusterOption
		opts = append(opts, shoal.Workers(2), shoal.Threads(2))
		if py := os.Getenv("SHOAL_PYTHON"); py != "" {
			opts = append(opts, shoal.PythonExecutable(py))
		}
		shared.cluster, shared.err = shoal.NewLocalCluster(ctx, opts...)
	})
	if shared.err != nil {
		t.Fatalf("starting the shared cluster: %v", shared.err)
	}
	return shared.cluster.Client()
}

// ctxT is a context for one test, cancelled when it ends.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func logsOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() && shared.cluster != nil {
			fmt.Fprintf(os.Stderr, "cluster log:\n%s\n", shared.cluster.Logs())
		}
	})
}
