package scheduler

import (
	"hash/maphash"

	"github.com/shoal-dev/shoal/internal/mem"
)

// keyIndex finds a task id by key. It is an open-addressing hash table with linear probing
// whose 64-bit slots hold a 32-bit hash of the key and the id+1 (0 is an empty slot); the
// keys themselves live in the task records. Compared with a map[string]int32 it takes 8–16
// bytes per task instead of ~40, holds no pointers (the garbage collector never scans it),
// and grows by re-placing slots from their stored hash, without rehashing a single key.
type keyIndex struct {
	slots []uint64
	n     int
	seed  maphash.Seed
}

func newKeyIndex() keyIndex { return keyIndex{slots: make([]uint64, 64), seed: maphash.MakeSeed()} }

func (x *keyIndex) hash(key string) uint32 { return uint32(maphash.String(x.seed, key)) }

// lookup returns the id of key.
func (c *Core) lookup(key string) (int32, bool) {
	x := &c.index
	h := x.hash(key)
	mask := uint32(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := x.slots[i]
		if s == 0 {
			return -1, false
		}
		if uint32(s>>32) == h {
			if id := int32(uint32(s) - 1); c.tasks.at(id).key == key {
				return id, true
			}
		}
	}
}

// mustLookup returns the id of a key known to exist.
func (c *Core) mustLookup(key string) int32 {
	id, ok := c.lookup(key)
	if !ok {
		panic("scheduler: key " + key + " is not interned")
	}
	return id
}

// indexAdd records key → id; key must not be indexed already.
func (c *Core) indexAdd(key string, id int32) {
	x := &c.index
	if (x.n+1)*10 > len(x.slots)*7 { // load factor ≤ 0.7
		x.grow()
	}
	x.place(uint64(x.hash(key))<<32 | uint64(uint32(id)+1))
	x.n++
}

func (x *keyIndex) place(s uint64) {
	mask := uint32(len(x.slots) - 1)
	i := uint32(s>>32) & mask
	for x.slots[i] != 0 {
		i = (i + 1) & mask
	}
	x.slots[i] = s
}

func (x *keyIndex) grow() {
	old := x.slots
	x.slots = make([]uint64, 2*len(old))
	// present and writable before a probe reads it (a probe that read a page first made the
	// store after it fault again: 2.5 % of the scheduler's CPU at 10,000 workers)
	mem.Fresh(x.slots)
	for _, s := range old {
		if s != 0 {
			x.place(s)
		}
	}
}

// indexRemove forgets key, which maps to id.
func (c *Core) indexRemove(key string, id int32) {
	x := &c.index
	h := x.hash(key)
	mask := uint32(len(x.slots) - 1)
	want := uint64(h)<<32 | uint64(uint32(id)+1)
	i := h & mask
	for x.slots[i] != want {
		if x.slots[i] == 0 {
			return // not indexed
		}
		i = (i + 1) & mask
	}
	x.n--
	// Backward-shift deletion: pull later slots of the probe run into the hole when their
	// home position does not lie cyclically in (hole, slot].
	for j := i; ; {
		j = (j + 1) & mask
		s := x.slots[j]
		if s == 0 {
			x.slots[i] = 0
			return
		}
		k := uint32(s>>32) & mask
		if i <= j && (i < k && k <= j) || i > j && (i < k || k <= j) {
			continue
		}
		x.slots[i] = s
		i = j
	}
}
