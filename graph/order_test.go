package graph

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// byRank returns the keys sorted by their rank.
func byRank(tasks []Task) []string {
	ranks := Order(tasks)
	keys := make([]string, len(tasks))
	for i, r := range ranks {
		keys[r] = tasks[i].Key
	}
	return keys
}

func TestOrderTreeIsDepthFirst(t *testing.T) {
	tasks := []Task{
		gotask("a0"), gotask("a1"), gotask("a2"), gotask("a3"),
		gotask("s01", "a0", "a1"), gotask("s23", "a2", "a3"), gotask("total", "s01", "s23"),
	}
	want := []string{"a0", "a1", "s01", "a2", "a3", "s23", "total"}
	if got := byRank(tasks); !slices.Equal(got, want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
}

func TestOrderChainsFinishBeforeNewRoots(t *testing.T) {
	var tasks []Task
	for i := range 3 {
		tasks = append(tasks, gotask(fmt.Sprint("x", i)))
	}
	for i := range 3 {
		tasks = append(tasks, gotask(fmt.Sprint("y", i), fmt.Sprint("x", i)))
	}
	want := []string{"x0", "y0", "x1", "y1", "x2", "y2"}
	if got := byRank(tasks); !slices.Equal(got, want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
}

func TestOrderCriticalPathFirst(t *testing.T) {
	tasks := []Task{
		gotask("short"),
		gotask("c0"), gotask("c1", "c0"), gotask("c2", "c1"),
		gotask("join", "short", "c2"),
		gotask("lone"),
	}
	got := byRank(tasks)
	want := []string{"c0", "c1", "c2", "short", "join", "lone"}
	if !slices.Equal(got, want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
}

func TestOrderPriorityDominates(t *testing.T) {
	tasks := []Task{gotask("a"), gotask("b", "a"), gotask("urgent"), gotask("later")}
	tasks[2].Priority = 5
	tasks[3].Priority = -1
	got := byRank(tasks)
	want := []string{"urgent", "a", "b", "later"}
	if !slices.Equal(got, want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
}

func TestOrderRandomIsTopologicalPermutation(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 50 {
		n := 1 + r.IntN(200)
		tasks := make([]Task, n)
		for i := range tasks {
			var deps []string
			for range r.IntN(4) {
				if i > 0 {
					deps = append(deps, fmt.Sprint("k", r.IntN(i)))
				}
			}
			tasks[i] = gotask(fmt.Sprint("k", i), deps...)
		}
		ranks := Order(tasks)
		seen := make([]bool, n)
		for _, rk := range ranks {
			if rk < 0 || rk >= n || seen[rk] {
				t.Fatalf("trial %d: ranks are not a permutation: %v", trial, ranks)
			}
			seen[rk] = true
		}
		for i := range tasks { // equal priorities: every dependency ranks first
			for _, d := range Deps(&tasks[i]) {
				var j int
				fmt.Sscanf(d, "k%d", &j)
				if ranks[j] >= ranks[i] {
					t.Fatalf("trial %d: %s (rank %d) before its dependency %s (rank %d)", trial, tasks[i].Key, ranks[i], d, ranks[j])
				}
			}
		}
	}
}

// bigCSR builds a ~n-node graph: n/2 roots, each mapped once, then reduced by a binary tree.
func bigCSR(n int) (off, dep []int32) {
	roots := n / 2
	off = []int32{0}
	for range roots {
		off = append(off, int32(len(dep)))
	}
	level := make([]int32, 0, roots)
	for i := range roots {
		dep = append(dep, int32(i))
		off = append(off, int32(len(dep)))
		level = append(level, int32(roots+i))
	}
	next := int32(2 * roots)
	for len(level) > 1 {
		var up []int32
		for i := 0; i+1 < len(level); i += 2 {
			dep = append(dep, level[i], level[i+1])
			off = append(off, int32(len(dep)))
			up = append(up, next)
			next++
		}
		if len(level)%2 == 1 {
			up = append(up, level[len(level)-1])
		}
		level = up
	}
	return off, dep
}

func BenchmarkOrder1M(b *testing.B) {
	off, dep := bigCSR(1 << 20)
	n := len(off) - 1
	b.ResetTimer()
	for b.Loop() {
		OrderCSR(off, dep, nil)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/task")
}
