package main

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/stretchr/testify/require"
)

// A user's own binary (examples/customworker: worker.Register + cli.Main) runs a cluster whose
// workers serve the user's Go function by name.
func TestE2ECustomWorkerBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "customworker")
	out, err := exec.Command("go", "build", "-o", bin, "../../examples/customworker").CombinedOutput()
	require.NoError(t, err, string(out))
	saved := shoalBin
	shoalBin = bin
	c := startCluster(t, 2)
	shoalBin = saved
	cl := c.connect(t)
	ctx := ctxT(t, 60*time.Second)
	g := client.NewGraph()
	f := g.Go("fib-50", "fib", 50)
	futs, err := cl.Submit(ctx, g, f)
	require.NoError(t, err)
	v, err := futs[0].Result(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(12586269025), asInt(t, v))
}
