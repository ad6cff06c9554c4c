package mem

import (
	"testing"
	"unsafe"
)

type rec struct {
	p *int
	s string
	n [5]int64
}

// Fresh leaves a slice as it was, whatever its contents, and touches nothing past its
// capacity (the race and address checkers would see a write outside it; here the values of
// a neighbouring slice are checked).
func TestFreshChangesNothing(t *testing.T) {
	x := 7
	s := make([]rec, 5000, 6000)
	for i := range s {
		s[i] = rec{p: &x, s: "k", n: [5]int64{int64(i)}}
	}
	after := make([]byte, 1<<16)
	for i := range after {
		after[i] = 0xAB
	}
	Fresh(s)
	for i := range s {
		if s[i].p != &x || s[i].s != "k" || s[i].n[0] != int64(i) {
			t.Fatalf("element %d changed: %+v", i, s[i])
		}
	}
	for i, b := range after {
		if b != 0xAB {
			t.Fatalf("byte %d of another slice changed", i)
		}
	}
	small := []int64{1, 2, 3}
	Fresh(small)
	if small[0] != 1 || small[2] != 3 {
		t.Fatal("a small slice changed")
	}
	if unsafe.Sizeof(rec{})*6000 < touchMin {
		t.Fatal("the test slice is below touchMin: Fresh did nothing")
	}
}

// Pages, filled in order, leaves the contents as they are and makes present only the pages
// that elements reached.
func TestPagesFollowTheFill(t *testing.T) {
	s := make([]rec, 0, 4000) // 4000*64 bytes: 63 pages
	p := TrackPages(s)
	if p.base == nil {
		t.Fatal("a slice over touchMin not tracked")
	}
	x := 3
	for i := 0; i < 100; i++ {
		p.Before(i)
		s = append(s, rec{p: &x, n: [5]int64{int64(i)}})
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
	if want := (base+100*unsafe.Sizeof(rec{})+page-1)/page*page - base; p.touched != want {
		t.Fatalf("touched %d bytes for 100 elements, want %d", p.touched, want)
	}
	for i := range s {
		if s[i].p != &x || s[i].n[0] != int64(i) {
			t.Fatalf("element %d changed: %+v", i, s[i])
		}
	}
	var none Pages
	none.Before(5) // the zero value does nothing
	if small := TrackPages(make([]int, 10)); small.base != nil {
		t.Fatal("a small slice tracked")
	}
}
