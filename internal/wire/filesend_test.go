package wire

import (
	"bytes"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// memfdWith returns a memfd holding b (or a temporary file where memfds do not exist).
func memfdWith(t *testing.T, b []byte) *os.File {
	t.Helper()
	var f *os.File
	if fd, err := unix.MemfdCreate("filesend-test", unix.MFD_CLOEXEC); err == nil {
		f = os.NewFile(uintptr(fd), "memfd")
	} else {
		f, err = os.CreateTemp(t.TempDir(), "frame")
		require.NoError(t, err)
	}
	_, err := f.Write(b)
	require.NoError(t, err)
	return f
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	return b
}

// closed tells whether f was closed (by the connection).
func closed(f *os.File) bool {
	_, err := f.Stat()
	return err != nil
}

func TestSendFramesFromFiles(t *testing.T) {
	// a file region in the middle of a message, between frames in memory, over TCP (sendfile)
	// and over a connection that is not a socket (net.Pipe: copied through a buffer)
	big := pattern(9<<20 + 123) // more than one stallChunk
	for _, name := range []string{"tcp", "pipe"} {
		t.Run(name, func(t *testing.T) {
			var cc, sc *Conn
			if name == "tcp" {
				var cerr, serr error
				cc, sc, cerr, serr = pipePair(t, "", "", RoleClient)
				require.NoError(t, cerr)
				require.NoError(t, serr)
				sc.setTimeouts(0, time.Minute) // file frames honour the stall timeout's chunks
			} else {
				a, b := net.Pipe()
				cc, sc = newConn(a, DefaultLimits(), RoleClient), newConn(b, DefaultLimits(), RoleClient)
			}
			defer cc.Close()
			defer sc.Close()
			f := memfdWith(t, append([]byte("skipped"), big...))
			g := memfdWith(t, []byte("xxsmallyy"))
			hdr, err := EncodeHeader(&Msg{Op: OpData, ID: 7})
			require.NoError(t, err)
			require.NoError(t, sc.SendFrames(hdr, []Frame{
				{Bytes: []byte("before")},
				{File: f, Off: 7, Len: int64(len(big))},
				{File: g, Off: 2, Len: 5},
				{Bytes: bytes.Repeat([]byte{1}, 100<<10)}, // a big in-memory frame too
				{File: g, Off: 0, Len: 0},
			}))
			require.NoError(t, sc.Send(&Msg{Op: OpOK, ID: 8}, []byte("next message")))
			m, frames, err := cc.Recv()
			require.NoError(t, err)
			require.Equal(t, uint64(7), m.ID)
			require.Len(t, frames, 5)
			require.Equal(t, "before", string(frames[0]))
			require.True(t, bytes.Equal(big, frames[1]), "the file region arrives intact")
			require.Equal(t, "small", string(frames[2]))
			require.Equal(t, 100<<10, len(frames[3]))
			require.Empty(t, frames[4])
			m, frames, err = cc.Recv()
			require.NoError(t, err)
			require.Equal(t, uint64(8), m.ID)
			require.Equal(t, "next message", string(frames[0]))
			require.Eventually(t, func() bool { return closed(f) && closed(g) }, 5*time.Second, time.Millisecond,
				"the connection closes the files it sent")
		})
	}
}

func TestSendFramesShortFileFailsTheConnection(t *testing.T) {
	cc, sc := connPair(t, "", RoleClient)
	f := memfdWith(t, []byte("only ten b"))
	hdr, err := EncodeHeader(&Msg{Op: OpData, ID: 1})
	require.NoError(t, err)
	require.NoError(t, sc.SendFrames(hdr, []Frame{{File: f, Off: 0, Len: 1000}}))
	// the writer cannot send what the frame declared: it fails the connection (the reader
	// sees it end mid-message) instead of hanging or sending garbage
	_, _, err = cc.Recv()
	require.Error(t, err)
	require.Eventually(t, func() bool { return sc.Send(&Msg{Op: OpOK}) != nil }, 5*time.Second, time.Millisecond)
	require.ErrorContains(t, sc.Send(&Msg{Op: OpOK}), "file ends before its frame")
	require.True(t, closed(f))
}

func TestSendFramesAfterCloseClosesFiles(t *testing.T) {
	cc, sc := connPair(t, "", RoleClient)
	cc.Close()
	sc.Abort()
	f := memfdWith(t, []byte("data"))
	hdr, _ := EncodeHeader(&Msg{Op: OpData})
	require.Error(t, sc.SendFrames(hdr, []Frame{{File: f, Len: 4}}))
	require.True(t, closed(f), "a refused file frame's file is closed")
	g := memfdWith(t, []byte("data"))
	require.ErrorContains(t, sc.SendFrames(hdr, []Frame{{File: g, Off: -1, Len: 4}}), "bad region")
	require.True(t, closed(g))
}
