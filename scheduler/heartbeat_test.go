package scheduler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The heartbeat interval asked of workers grows with the cluster (about a thousand heartbeats
// a second in all) but stays within a quarter of the heartbeat timeout.
func TestHeartbeatIntervalGrowsWithTheCluster(t *testing.T) {
	timeout := 30 * time.Second
	require.Equal(t, 2*time.Millisecond, heartbeatInterval(2, timeout), "small clusters: nothing is asked (under a second)")
	require.Equal(t, time.Second, heartbeatInterval(1000, timeout))
	require.Equal(t, 3*time.Second, heartbeatInterval(3000, timeout))
	require.Equal(t, 7500*time.Millisecond, heartbeatInterval(10000, timeout), "capped at a quarter of the timeout")
	require.Equal(t, 10*time.Second, heartbeatInterval(10000, 0), "no timeout: no cap")
}
