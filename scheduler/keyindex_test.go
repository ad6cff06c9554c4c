package scheduler

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

// The key index must agree with a map under random inserts and removals, including the
// backward shifts of deletions in long probe runs (a tiny table forces collisions).
func TestKeyIndexMatchesMap(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		rng := rand.New(rand.NewPCG(seed, seed))
		c := &Core{index: newKeyIndex()}
		ref := map[string]int32{}
		var free []int32
		for step := range 20000 {
			if len(ref) > 0 && rng.IntN(3) == 0 {
				// remove a random present key
				var k string
				n := rng.IntN(len(ref))
				for k = range ref {
					if n == 0 {
						break
					}
					n--
				}
				id := ref[k]
				c.indexRemove(k, id)
				delete(ref, k)
				c.tasks.at(id).key = ""
				free = append(free, id)
			} else {
				k := "k-" + strconv.Itoa(rng.IntN(5000))
				if _, ok := ref[k]; ok {
					continue
				}
				var id int32
				if len(free) > 0 {
					id, free = free[len(free)-1], free[:len(free)-1]
				} else {
					id = c.tasks.add()
				}
				c.tasks.at(id).key = k
				c.indexAdd(k, id)
				ref[k] = id
			}
			if step%97 == 0 {
				for i := range 5000 {
					k := "k-" + strconv.Itoa(i)
					id, ok := c.lookup(k)
					want, wok := ref[k]
					if ok != wok || ok && id != want {
						t.Fatalf("seed %d step %d: lookup(%q) = %d,%v; want %d,%v", seed, step, k, id, ok, want, wok)
					}
				}
				if c.index.n != len(ref) {
					t.Fatalf("n = %d, want %d", c.index.n, len(ref))
				}
			}
		}
	}
}
