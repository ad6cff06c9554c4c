package worker

import (
	"bytes"
	"runtime/debug"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

// A segment-backed value asked for without shared memory (a client, a peer on another machine)
// goes out from its memfd with sendfile: whole, next to frames in memory, and every descriptor
// duplicated for a send is closed once it is written, while the store keeps its own.
func TestSegmentValueSentFromItsFile(t *testing.T) {
	// no collection: an unclosed *os.File would be closed by its finalizer and hide a leak
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	w := newTestWorker(t, testConfig(t))
	data := payload(3, 5<<20+17)
	seg, err := newSegment(sealedMemfd(t, "sendfile-dep", data, 4096, true),
		[]segPlace{{Frame: 1, Off: 4096, Len: int64(len(data))}}, [][]byte{[]byte("meta"), {}})
	require.NoError(t, err)
	w.Store().PutSegment("big", wire.EncBytes, [][]byte{[]byte("meta"), {}}, seg)
	w.Store().Put("plain", wire.EncBytes, [][]byte{bytes.Repeat([]byte{9}, 200<<10)}, nil)
	require.Equal(t, 1, openMemfds(t, "sendfile-dep"))

	for _, role := range []wire.Role{wire.RoleClient, wire.RolePeer} {
		c := dialData(t, w.DataAddr(), "", role)
		for i := range 5 {
			m, frames := getData(t, c, uint64(i+1), "plain", "big", "gone")
			require.Len(t, m.Items, 2)
			require.Equal(t, []string{"gone"}, m.Missing)
			require.Len(t, frames, 3)
			require.Equal(t, bytes.Repeat([]byte{9}, 200<<10), frames[0])
			require.Equal(t, "meta", string(frames[1]))
			require.True(t, bytes.Equal(data, frames[2]), "%s: the segment's bytes arrive intact", role)
			require.EqualValues(t, len(data)+4, m.Items[1].NBytes)
		}
		c.Close()
	}
	require.Eventually(t, func() bool { return openMemfds(t, "sendfile-dep") == 1 }, 5*time.Second, 10*time.Millisecond,
		"the descriptors duplicated for sending are closed; the store keeps its own")
	require.Zero(t, w.Metrics().ShmTransfersOut, "nothing went as shared memory")

	// dropped from the store while nothing is being sent: its memfd goes
	w.Store().Delete("big")
	require.Zero(t, openMemfds(t, "sendfile-dep"))
}
