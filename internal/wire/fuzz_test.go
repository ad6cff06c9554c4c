package wire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"testing"
	"testing/iotest"

	"github.com/vmihailenco/msgpack/v5"
)

// FuzzReadFrames feeds arbitrary bytes, whole and split into one-byte reads, to the frame and
// header decoders: they must return an error or a message, never panic or over-allocate.
func FuzzReadFrames(f *testing.F) {
	var ok bytes.Buffer
	hdr, _ := EncodeHeader(&Msg{Op: OpGetData, ID: 1, Keys: []string{"a", "b"}})
	WriteFrames(&ok, [][]byte{hdr, []byte("payload")})
	f.Add(ok.Bytes())
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x80})
	f.Add([]byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("SHOL\x00\x01\x01\x00\x00"))
	f.Add([]byte{})
	lim := Limits{MaxFrames: 16, MaxFrame: 1 << 16, MaxHeader: 1 << 12, MaxMessage: 1 << 17}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, r := range []*bufio.Reader{
			bufio.NewReader(bytes.NewReader(data)),
			bufio.NewReader(iotest.OneByteReader(bytes.NewReader(data))),
		} {
			frames, err := ReadFrames(r, lim)
			if err != nil {
				continue
			}
			var total int
			for _, fr := range frames {
				total += len(fr)
			}
			if total > int(lim.MaxMessage) || len(frames) > lim.MaxFrames {
				t.Fatalf("limits exceeded: %d bytes in %d frames", total, len(frames))
			}
			DecodeHeader(frames[0])
		}
	})
}

// FuzzHello feeds arbitrary bytes to the handshake decoder.
func FuzzHello(f *testing.F) {
	var b bytes.Buffer
	WriteHello(&b, ClientHello{Version: Version, Role: RoleClient, Token: "tok"})
	f.Add(b.Bytes())
	f.Add([]byte("SHOL\x00\x01\x01\xff\xff"))
	f.Add([]byte("GET / HTTP/1.1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadHello(iotest.OneByteReader(bytes.NewReader(data)))
		if err == nil && len(h.Token) > maxTokenLen {
			t.Fatalf("token of %d bytes accepted", len(h.Token))
		}
		if err == nil {
			CheckHello(h, "tok", RoleClient)
		}
	})
}

// FuzzDecodeAny: a stored msgpack value from a peer decodes or is refused, never panics, and
// what is accepted is what msgpack.Unmarshal gives.
func FuzzDecodeAny(f *testing.F) {
	for _, v := range []any{nil, 1, "s", []any{1, []any{2}}, map[string]any{"a": 1.5}, []byte{1}} {
		b, _ := msgpack.Marshal(v)
		f.Add(b)
	}
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add(bytes.Repeat([]byte{0x91}, 1000))
	f.Add([]byte("\xcb\xff\xff000000")) // a NaN
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeAny(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		var want any
		if err := msgpack.Unmarshal(b, &want); err != nil {
			t.Fatalf("accepted what msgpack refuses (%v): %x", err, b)
		}
		if fmt.Sprintf("%#v", want) != fmt.Sprintf("%#v", got) { // (NaN != NaN for DeepEqual)
			t.Fatalf("decoded %#v, msgpack %#v", got, want)
		}
	})
}
