package shoal_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	shoal "github.com/shoal-dev/shoal/clients/go"
	"github.com/stretchr/testify/require"
)

// The test binary is its own cluster: NewLocalCluster re-executes it, TestMain's shoal.Main
// turns those processes into a scheduler and workers that run this package's functions, and
// Close leaves no process behind.
func TestLocalClusterIsThisBinary(t *testing.T) {
	ctx := ctxT(t)
	lc, err := shoal.NewLocalCluster(ctx, shoal.Workers(3))
	require.NoError(t, err)
	t.Cleanup(func() { lc.Close() })
	c := lc.Client()
	ws, err := c.Info(ctx)
	require.NoError(t, err)
	require.Len(t, ws, 3)
	self, err := os.Executable()
	require.NoError(t, err)
	var pgid int
	for _, w := range ws {
		exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(w.PID), "exe"))
		require.NoError(t, err)
		require.Equal(t, self, exe, "worker %s runs this test binary", w.Name)
		pg, err := syscall.Getpgid(w.PID)
		require.NoError(t, err)
		require.NotEqual(t, syscall.Getpgrp(), pg, "the cluster has its own process group")
		pgid = pg
	}

	g := shoal.NewGraph()
	got, err := shoal.Get(ctx, c, g, total.Call(g, shoal.Collect(shoal.Map(g, square, []int64{1, 2, 3}))))
	require.NoError(t, err)
	require.Equal(t, int64(14), got)

	require.NoError(t, lc.Close())
	require.NoError(t, lc.Close(), "closing twice is harmless")
	require.ErrorIs(t, syscall.Kill(-pgid, 0), syscall.ESRCH, "no process of the cluster is left")
	for _, w := range ws {
		require.ErrorIs(t, syscall.Kill(w.PID, 0), syscall.ESRCH, "worker %s is gone", w.Name)
	}
	_, err = shoal.Get(ctx, c, g, square.Call(g, shoal.Lit[int64](2)))
	require.ErrorIs(t, err, shoal.ErrClosed)
}

// A cluster of another binary, the stock shoal, serves its built-ins and refuses this
// program's functions with the error it gives any unknown function.
func TestStockBinaryRefusesUnknownFunctions(t *testing.T) {
	bin := os.Getenv("SHOAL_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "shoal")
		out, err := exec.Command("go", "build", "-o", bin, "../../cmd/shoal").CombinedOutput()
		require.NoError(t, err, "building the stock shoal binary: %s", out)
	}
	ctx := ctxT(t)
	lc, err := shoal.NewLocalCluster(ctx, shoal.Binary(bin), shoal.Workers(1))
	require.NoError(t, err)
	t.Cleanup(func() { lc.Close() })
	c := lc.Client()

	g := shoal.NewGraph()
	inc := shoal.Extern[int64, int64]("inc")
	v, err := shoal.Get(ctx, c, g, inc.Call(g, shoal.Lit[int64](41)))
	require.NoError(t, err)
	require.Equal(t, int64(42), v)

	g = shoal.NewGraph()
	_, err = shoal.Get(ctx, c, g, square.Call(g, shoal.Lit[int64](3)))
	require.ErrorIs(t, err, shoal.ErrUnknownFunction)
	require.ErrorContains(t, err, `Go function "test_square", which no worker registers`)
}

// A program that forgets shoal.Main gets an error saying so, not a hang.
func TestClusterOfAProgramWithoutMain(t *testing.T) {
	ctx := ctxT(t)
	_, err := shoal.NewLocalCluster(ctx, shoal.Binary("/bin/true"), shoal.StartTimeout(time.Minute))
	require.Error(t, err)
	require.ErrorContains(t, err, "shoal.Main()")
	require.False(t, errors.Is(err, os.ErrNotExist))
}
