package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The heartbeat interval asked of workers grows with the cluster (about 200 heartbeats a
// second in all, as dask asks) up to 30 s; under a second nothing is asked.
func TestHeartbeatIntervalGrowsWithTheCluster(t *testing.T) {
	require.Equal(t, 10*time.Millisecond, heartbeatInterval(2))
	require.Zero(t, askedInterval(2), "small clusters: nothing is asked (under a second)")
	require.Zero(t, askedInterval(200))
	require.Equal(t, 1005*time.Millisecond, askedInterval(201))
	require.Equal(t, 5*time.Second, askedInterval(1000))
	require.Equal(t, 15*time.Second, askedInterval(3000))
	require.Equal(t, 30*time.Second, askedInterval(6000))
	require.Equal(t, 30*time.Second, askedInterval(10000), "at most 30 s")
}
