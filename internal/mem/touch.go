// Package mem holds helpers for the process's own memory.
package mem

import (
	"sync/atomic"
	"unsafe"
)

// touchMin is the size from which Fresh touches a slice's pages: below it the backing array
// is likely in pages already in use.
const touchMin = 64 << 10

// page is the smallest page size of the platforms Shoal runs on.
const page = 4 << 10

// Fresh makes every page of s's backing array (to its capacity) present and writable, when it
// is at least touchMin bytes, without changing its contents: call it on a large slice just
// made, before anything reads it.
//
// A large allocation comes from memory the process has never touched, which make does not
// clear. When the first access to such a page is a read, the kernel maps its shared zero page
// there, and the first write then faults again to replace it, with a TLB shootdown: an
// interrupt to every other core running the process, dear in a VM. Reads come first more
// often than one would think: a write of a pointer field during a garbage collection first
// reads the old pointer (the write barrier), and a hash table probes before it stores. With
// 10,000 workers, those second faults were 3-4 % of the scheduler's CPU
// (docs/performance.md, "10,000 workers: fewer collections"). Adding zero to a word of each
// page with one atomic read-modify-write (LOCK XADD on amd64) is a write access from the
// start: the page comes writable at the first fault, and its contents stay as they were.
func Fresh[T any](s []T) {
	p := TrackPages(s)
	p.Before(cap(s) - 1) // as if filled to its capacity
}

// nextPage is the offset from base of the page boundary after base+off.
func nextPage(base unsafe.Pointer, off uintptr) uintptr {
	return (uintptr(base)+off)/page*page + page - uintptr(base)
}

// touchWord adds zero to the first 4-byte aligned word at or after base+off, when it lies
// below base+limit (on the same page as base+off: pages are a multiple of 4 bytes).
func touchWord(base unsafe.Pointer, off, limit uintptr) {
	off = (uintptr(base)+off+3)&^3 - uintptr(base)
	if off+4 <= limit {
		atomic.AddUint32((*uint32)(unsafe.Add(base, off)), 0)
	}
}

// Pages does what Fresh does for a slice filled in order, a page at a time just before the
// first element that reaches it, so that capacity never filled is never made resident (a
// decoder's slice sized from what a peer declared). The zero value does nothing.
type Pages struct {
	base    unsafe.Pointer
	size    uintptr // of an element
	touched uintptr // bytes from base made present
	limit   uintptr // bytes in the backing array
}

// TrackPages returns the Pages of s, or the zero Pages when s is below touchMin.
func TrackPages[T any](s []T) Pages {
	var zero T
	size := unsafe.Sizeof(zero)
	n := uintptr(cap(s)) * size
	if n < touchMin || size == 0 {
		return Pages{}
	}
	return Pages{base: unsafe.Pointer(unsafe.SliceData(s)), size: size, limit: n}
}

// Before makes the pages under element i present, when they are not yet: call it before
// writing element i, for i = 0, 1, 2, … in order.
func (p *Pages) Before(i int) {
	if p.base == nil {
		return
	}
	for end := min(uintptr(i+1)*p.size, p.limit); p.touched < end; {
		touchWord(p.base, p.touched, p.limit)
		p.touched = nextPage(p.base, p.touched)
	}
}
