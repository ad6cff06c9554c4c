package worker

import (
	"bytes"
	"container/list"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

func payload(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*31 + j)
	}
	return b
}

func TestStoreSpillRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir, 100)
	want := map[string][][]byte{}
	for i := range 10 {
		k := fmt.Sprintf("k%d", i)
		frames := [][]byte{payload(i, 30)}
		enc := wire.EncBytes
		if i%3 == 0 { // a multi-frame pickle: frames must survive in order
			frames = [][]byte{payload(i, 10), payload(i+100, 15), {}, payload(i+200, 5)}
			enc = wire.EncPickle
		}
		want[k] = frames
		require.Equal(t, int64(30), s.Put(k, enc, frames, nil))
	}
	st := s.Stats()
	require.Equal(t, 10, st.Keys)
	require.LessOrEqual(t, st.Memory, int64(100))
	require.Equal(t, int64(300), st.Memory+st.Spilled)
	require.Positive(t, st.SpilledKeys)
	files, _ := os.ReadDir(dir)
	require.Len(t, files, st.SpilledKeys)

	// Reading without restore leaves the accounting alone.
	e, err := s.Get("k1", false)
	require.NoError(t, err)
	require.Equal(t, want["k1"], e.Frames)
	require.Equal(t, st, s.Stats())

	// Every value comes back identical, restored or not.
	for k, frames := range want {
		e, err := s.Get(k, true)
		require.NoError(t, err, k)
		require.Equal(t, len(frames), len(e.Frames), k)
		for i := range frames {
			require.True(t, bytes.Equal(frames[i], e.Frames[i]), "%s frame %d", k, i)
		}
		st := s.Stats()
		require.LessOrEqual(t, st.Memory, int64(100))
		require.Equal(t, int64(300), st.Memory+st.Spilled)
	}
	require.Positive(t, s.Stats().Unspills)

	require.Equal(t, 10, s.Delete(s.Keys()...))
	require.Equal(t, StoreStats{Spills: s.Stats().Spills, Unspills: s.Stats().Unspills}, s.Stats())
	files, _ = os.ReadDir(dir)
	require.Empty(t, files, "spill files are removed with their values")
}

func TestStoreReplaceAndObj(t *testing.T) {
	s := NewStore(t.TempDir(), 0)
	s.Put("a", wire.EncBytes, [][]byte{[]byte("one")}, nil)
	s.Put("a", wire.EncBytes, [][]byte{[]byte("three")}, nil)
	require.Equal(t, int64(5), s.Stats().Memory)
	e, err := s.Get("a", true)
	require.NoError(t, err)
	require.Nil(t, e.Obj)
	s.SetObj(e, "decoded")
	e, _ = s.Get("a", true)
	require.Equal(t, "decoded", e.Obj)
	_, err = s.Get("missing", true)
	require.ErrorIs(t, err, ErrNotFound)
	require.Zero(t, s.Delete("missing"))
}

func TestStoreSpillDropsObjAndCorruptFile(t *testing.T) {
	dir := t.TempDir()
	s := NewStore(dir, 10)
	s.Put("a", wire.EncBytes, [][]byte{payload(1, 8)}, "obj")
	s.Put("b", wire.EncBytes, [][]byte{payload(2, 8)}, nil) // pushes a out
	require.Equal(t, 1, s.Stats().SpilledKeys)
	files, _ := os.ReadDir(dir)
	require.Len(t, files, 1)
	e, err := s.Get("a", false)
	require.NoError(t, err)
	require.Nil(t, e.Obj, "a spilled value has no cached object")
	require.NoError(t, os.WriteFile(dir+"/"+files[0].Name(), []byte("SHSPgarbage"), 0o600))
	_, err = s.Get("a", true)
	require.ErrorContains(t, err, "corrupt spill file")
	s.Close()
	files, _ = os.ReadDir(dir)
	require.Empty(t, files)
}

func BenchmarkStorePutSpill(b *testing.B) {
	s := NewStore(b.TempDir(), 64<<20)
	v := [][]byte{make([]byte, 1<<20)}
	b.SetBytes(1 << 20)
	for i := 0; b.Loop(); i++ {
		s.Put(fmt.Sprint(i), wire.EncBytes, v, nil)
	}
}

func writeFile(p string, b []byte) error { return os.WriteFile(p, b, 0o600) }

// The store's intrusive LRU list keeps the order container/list keeps under any sequence of
// pushes, moves and removals, including moves and removals of values not in it.
func TestLRUListMatchesContainerList(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var l lruList
	l.init()
	model := list.New()
	elems := map[*value]*list.Element{}
	vals := make([]*value, 50)
	for i := range vals {
		vals[i] = &value{key: fmt.Sprint(i)}
	}
	for range 5000 {
		v := vals[rng.IntN(len(vals))]
		e, in := elems[v]
		switch rng.IntN(3) {
		case 0:
			if !in {
				l.PushFront(v)
				elems[v] = model.PushFront(v)
			}
		case 1:
			l.MoveToFront(v)
			if in {
				model.MoveToFront(e)
			}
		case 2:
			l.Remove(v)
			if in {
				model.Remove(e)
				delete(elems, v)
			}
		}
		require.Equal(t, model.Len(), l.Len())
		var want, got []string
		for e := model.Front(); e != nil; e = e.Next() {
			want = append(want, e.Value.(*value).key)
		}
		for v := l.root.next; v != &l.root; v = v.next {
			got = append(got, v.key)
		}
		require.Equal(t, want, got)
		if b := l.Back(); model.Len() > 0 {
			require.Same(t, model.Back().Value.(*value), b)
		} else {
			require.Nil(t, b)
		}
	}
}
