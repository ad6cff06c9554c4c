package cli

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The environment a long-running command re-executes itself with: sysmonSetting added to the
// caller's GODEBUG, which the marker keeps (with "=" when it was set, even empty), and nothing
// when the caller named schedtrace already.
func TestSysmonEnv(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string // nil: no re-execution
	}{
		{[]string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=" + sysmonSetting, sysmonMarker + "="}},
		{[]string{"GODEBUG=gctrace=1", "HOME=/h"},
			[]string{"HOME=/h", "GODEBUG=gctrace=1," + sysmonSetting, sysmonMarker + "==gctrace=1"}},
		{[]string{"GODEBUG="}, []string{"GODEBUG=" + sysmonSetting, sysmonMarker + "=="}},
		{[]string{sysmonMarker + "=stale", "A=b"}, []string{"A=b", "GODEBUG=" + sysmonSetting, sysmonMarker + "="}},
		{[]string{"GODEBUG=schedtrace=0"}, nil},
		{[]string{"GODEBUG=gctrace=1,schedtrace=1000"}, nil},
		// the runtime reads " schedtrace" as another key: the caller's setting does nothing
		{[]string{"GODEBUG=gctrace=1, schedtrace=1000"},
			[]string{"GODEBUG=gctrace=1, schedtrace=1000," + sysmonSetting, sysmonMarker + "==gctrace=1, schedtrace=1000"}},
	} {
		got, ok := sysmonEnv(tc.in)
		require.Equal(t, tc.want != nil, ok, "%q", tc.in)
		if ok {
			require.Equal(t, tc.want, got, "%q", tc.in)
		}
	}
}
