package wire

import (
	"bytes"
	"errors"
	"io"
	"math/bits"
	"math/rand"
	"net"
	"strconv"
	"strings"
	"testing"
)

// chunkReader hands out src as if it arrived in pieces of the sizes in sizes (then all at
// once): a read returns at most the rest of the current piece.
type chunkReader struct {
	src   []byte
	sizes []int
	err   error // returned once src is exhausted (io.EOF if nil)
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		return 0, io.EOF
	}
	n := len(p)
	if len(c.sizes) > 0 {
		n = min(n, c.sizes[0])
	}
	n = copy(p, c.src[:min(n, len(c.src))])
	c.src = c.src[n:]
	if len(c.sizes) > 0 {
		if c.sizes[0] -= n; c.sizes[0] == 0 {
			c.sizes = c.sizes[1:]
		}
	}
	return n, nil
}

// TestConnReaderReadsWhatWasSent reads a random stream through random Peek, Buffered and
// Read calls of random sizes, delivered by the connection in random pieces, and checks every
// byte against the source: the buffer switches between small and big must never lose,
// repeat or reorder one.
func TestConnReaderReadsWhatWasSent(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for round := 0; round < 200; round++ {
		src := make([]byte, rng.Intn(600<<10))
		rng.Read(src)
		var sizes []int
		for i := 0; i < 2000; i++ {
			switch rng.Intn(3) {
			case 0:
				sizes = append(sizes, 1+rng.Intn(64))
			case 1:
				sizes = append(sizes, 1+rng.Intn(4<<10))
			default:
				sizes = append(sizes, 1+rng.Intn(200<<10))
			}
		}
		var b connReader
		b.init(&chunkReader{src: src, sizes: sizes})
		var got []byte
		for {
			switch rng.Intn(8) {
			case 0:
				b.shrink() // a reader about to wait for the driver
			case 1:
				n := b.Buffered()
				if b.release() != (n == 0) { // a reader parking its connection
					t.Fatalf("round %d: release with %d bytes buffered reported %v", round, n, n == 0)
				}
			}
			switch rng.Intn(3) {
			case 0:
				n := 1 + rng.Intn(6<<10)
				p, err := b.Peek(n)
				want := src[len(got):min(len(got)+n, len(src))]
				if !bytes.Equal(p, want) {
					t.Fatalf("round %d: Peek(%d) at %d gave %d bytes that differ from the source", round, n, len(got), len(p))
				}
				if err == nil && len(p) != n {
					t.Fatalf("round %d: Peek(%d) gave %d bytes and no error", round, n, len(p))
				}
				if b.Buffered() < len(p) {
					t.Fatalf("round %d: %d bytes peeked but %d buffered", round, len(p), b.Buffered())
				}
			default:
				p := make([]byte, 1+rng.Intn(100<<10))
				n, err := b.Read(p)
				got = append(got, p[:n]...)
				if err == io.EOF {
					if !bytes.Equal(got, src) {
						t.Fatalf("round %d: read %d bytes, want the %d sent", round, len(got), len(src))
					}
					goto next
				}
				if err != nil {
					t.Fatalf("round %d: Read: %v", round, err)
				}
				if !bytes.Equal(got, src[:len(got)]) {
					t.Fatalf("round %d: bytes %d..%d differ from the source", round, len(got)-n, len(got))
				}
			}
		}
	next:
	}
}

// TestConnReaderShrinks: shrink gives the big buffer back when what is buffered fits the small
// one, keeps it otherwise, and loses no byte either way.
func TestConnReaderShrinks(t *testing.T) {
	src := make([]byte, 80<<10)
	for i := range src {
		src[i] = byte(i * 7)
	}
	var b connReader
	b.init(&chunkReader{src: src, sizes: []int{60 << 10, 20 << 10}})
	if _, err := b.Peek(2 * smallRead); err != nil { // more than the small buffer: read into a big one
		t.Fatal(err)
	}
	var got []byte
	if b.big == nil || b.Buffered() != 60<<10 {
		t.Fatalf("after a 60 KiB read: big buffer %v, %d buffered", b.big != nil, b.Buffered())
	}
	b.shrink() // 60 KiB buffered: the big buffer stays
	if b.big == nil {
		t.Fatal("shrink let the big buffer go while it held more than the small one can")
	}
	rest := make([]byte, 60<<10-1000)
	if _, err := io.ReadFull(&b, rest); err != nil {
		t.Fatal(err)
	}
	got = append(got, rest...)
	b.shrink() // 1,000 bytes buffered: back to the small buffer
	if b.big != nil || b.Buffered() != 1000 {
		t.Fatalf("after shrink with 1000 bytes buffered: big buffer %v, %d buffered", b.big != nil, b.Buffered())
	}
	all, err := io.ReadAll(&b)
	if err != nil {
		t.Fatal(err)
	}
	if got = append(got, all...); !bytes.Equal(got, src) {
		t.Fatalf("read %d bytes that differ from the %d sent", len(got), len(src))
	}
}

// TestConnReaderHoldsBigBufferOnlyWhileStreaming: a connection that reads small messages
// holds no big buffer; one whose reads fill the small buffer takes one; it gives it back once
// reads bring little again and what it buffered is consumed.
func TestConnReaderHoldsBigBufferOnlyWhileStreaming(t *testing.T) {
	msg := func(n int) []byte { return bytes.Repeat([]byte{7}, n) }
	var src []byte
	for i := 0; i < 10; i++ {
		src = append(src, msg(100)...) // heartbeats
	}
	src = append(src, msg(10486*100)...) // a large value (1 MiB, in whole 100-byte reads)
	for i := 0; i < 10; i++ {
		src = append(src, msg(100)...)
	}
	sizes := make([]int, 0, 40)
	for i := 0; i < 10; i++ {
		sizes = append(sizes, 100)
	}
	for i := 0; i < 16; i++ {
		sizes = append(sizes, 64<<10)
	}
	for i := 0; i < 10; i++ {
		sizes = append(sizes, 100)
	}
	var b connReader
	b.init(&chunkReader{src: src, sizes: sizes})
	p := make([]byte, 100)
	for i := 0; i < 10; i++ {
		if _, err := io.ReadFull(&b, p); err != nil {
			t.Fatal(err)
		}
		if b.big != nil {
			t.Fatalf("heartbeat %d: a big buffer is held for 100-byte messages", i)
		}
	}
	sawBig := false
	for read := 0; read < 10486*100; read += 100 {
		if _, err := io.ReadFull(&b, p); err != nil {
			t.Fatal(err)
		}
		sawBig = sawBig || b.big != nil
	}
	if !sawBig {
		t.Fatal("a 1 MiB value was read without a big buffer")
	}
	for i := 0; i < 10; i++ {
		if _, err := io.ReadFull(&b, p); err != nil {
			t.Fatal(err)
		}
	}
	if b.big != nil {
		t.Fatal("the big buffer is still held once the stream went back to small messages")
	}
	if _, err := b.Read(p); err != io.EOF {
		t.Fatalf("Read at the end: %v, want EOF", err)
	}
}

// TestConnReaderErrors: a read error comes after the bytes that preceded it, once, and a
// reader that returns nothing forever is reported, not spun on.
func TestConnReaderErrors(t *testing.T) {
	boom := errors.New("boom")
	var b connReader
	b.init(&chunkReader{src: []byte("abc"), err: boom})
	p, err := b.Peek(10)
	if string(p) != "abc" || !errors.Is(err, boom) {
		t.Fatalf("Peek past the error: %q, %v", p, err)
	}
	got, err := io.ReadAll(&b)
	if string(got) != "abc" || !errors.Is(err, boom) {
		t.Fatalf("ReadAll: %q, %v", got, err)
	}
	if _, err := b.Peek(1 + bigRead); !errors.Is(err, errPeekTooLarge) {
		t.Fatalf("Peek beyond the big buffer: %v", err)
	}
	var stuck connReader
	stuck.init(readerFunc(func([]byte) (int, error) { return 0, nil }))
	if _, err := stuck.Peek(1); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("Peek on a reader that returns nothing: %v", err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestQueuedOutputInChunks: messages queued faster than they are written pile up in slices of
// about smallChunk bytes rather than in one slice grown by copying; they arrive intact and in
// order, and the written slices kept for reuse are bounded.
func TestQueuedOutputInChunks(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := newConn(a, DefaultLimits(), RoleWorker), newConn(b, DefaultLimits(), RoleWorker)
	defer ca.Abort()
	defer cb.Abort()
	const n = 20_000
	key := func(i int) string { return strings.Repeat("k", i%300) + strconv.Itoa(i) }
	for i := range n {
		if err := ca.Queue(&Msg{Op: OpKeyState, Key: key(i), State: "memory"}); err != nil {
			t.Fatal(err)
		}
	}
	ca.mu.Lock()
	chunks, total := len(ca.mu.smalls), 0
	for _, s := range ca.mu.smalls {
		total += len(*s)
		if len(*s) > smallChunk+1024 {
			ca.mu.Unlock()
			t.Fatalf("a pending slice of %d bytes (chunks are %d)", len(*s), smallChunk)
		}
	}
	ca.mu.Unlock()
	if chunks < total/(smallChunk+1024)+1 || chunks < 2 {
		t.Fatalf("%d bytes pending in %d slices", total, chunks)
	}
	ca.mu.Lock()
	grown := ca.mu.grown
	ca.mu.Unlock()
	if grown > 0 { // every message is under minRoom: a new slice, never a copy
		t.Fatalf("%d times a slice was grown by append", grown)
	}
	ca.Flush()
	for i := range n {
		m, _, err := cb.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.Key != key(i) {
			t.Fatalf("message %d has key %q, want %q", i, m.Key, key(i))
		}
	}
}

// TestSmallSlicesFromPools: a slice from getSmall holds what was asked for, whatever slices of
// whatever capacities went back to the pools before; one asked for within the classes has the
// capacity of its class at least; and the slices given back are the ones handed out again.
func TestSmallSlicesFromPools(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 20_000; i++ {
		if rng.Intn(2) == 0 {
			b := make([]byte, rng.Intn(10), 1+rng.Intn(3*smallChunk))
			putSmall(&b)
			continue
		}
		want := 1 + rng.Intn(3*smallChunk)
		p := getSmall(want)
		b := *p
		if len(b) != 0 || cap(b) < want {
			t.Fatalf("getSmall(%d): len %d, cap %d", want, len(b), cap(b))
		}
		if want <= 2*smallChunk {
			k := bits.Len(uint(want-1) / minSmall)
			if cap(b) < minSmall<<k {
				t.Fatalf("getSmall(%d): cap %d, below its class's %d", want, cap(b), minSmall<<k)
			}
		}
		putSmall(p)
	}
	for _, c := range []int{minSmall, minSmall + 1, 3 * minSmall, 2 * smallChunk} {
		b := make([]byte, 0, c)
		class := minSmall << (bits.Len(uint(c/minSmall)) - 1) // the size its class promises
		reused := 0
		for range 100 { // (a pool may drop what it holds, at a collection: most come back)
			putSmall(&b)
			if b2 := *getSmall(class); &b2[:1][0] == &b[:1][0] {
				reused++
			}
		}
		if reused < 50 {
			t.Fatalf("a slice of capacity %d given back came out again %d times in 100", c, reused)
		}
	}
}
