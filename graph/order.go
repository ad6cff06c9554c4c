package graph

import (
	"cmp"
	"slices"
)

// Order gives every task of a batch a static priority: the result holds a dense rank per
// task (0 … len(tasks)-1, lower runs first). Dependencies on keys outside the batch are
// ignored. See OrderCSR for the policy. Order is O((n+e) log n).
func Order(tasks []Task) []int {
	index := make(map[string]int32, len(tasks))
	for i := range tasks {
		index[tasks[i].Key] = int32(i)
	}
	off := make([]int32, len(tasks)+1)
	var dep []int32
	prio := make([]int, len(tasks))
	for i := range tasks {
		for _, d := range Deps(&tasks[i]) {
			if j, ok := index[d]; ok {
				dep = append(dep, j)
			}
		}
		off[i+1] = int32(len(dep))
		prio[i] = tasks[i].Priority
	}
	ranks := OrderCSR(off, dep, prio)
	out := make([]int, len(ranks))
	for i, r := range ranks {
		out[i] = int(r)
	}
	return out
}

// OrderCSR orders n = len(off)-1 nodes whose dependencies are given in compressed sparse row
// form: the dependencies of node i are dep[off[i]:off[i+1]], as node indices. prio holds the
// user priority of each node (larger first) or is nil. The graph must be acyclic (Validate).
// The result holds a dense rank per node, lower runs first.
//
// The policy, in the spirit of dask.order:
//   - user priority dominates: every node of a higher priority ranks before every node of a
//     lower one (readiness is the scheduler's business; a rank only breaks ties);
//   - within a priority, nodes are ranked by a depth-first post-order from the outputs
//     (nodes nothing in the batch depends on). Outputs with the longest dependency chain go
//     first, and below each node the dependency with the longest chain is visited first, so
//     the critical path starts early, a chain or sub-tree is finished before the next root
//     starts, and intermediate results can be released soon after they are made.
//
// Ties are broken by node index, so the result is deterministic. Cost: O(n + e log d).
func OrderCSR(off, dep []int32, prio []int) []int32 {
	n := len(off) - 1
	if n <= 0 {
		return nil
	}
	height := heights(off, dep)
	sorted := slices.Clone(dep)
	for i := range n {
		seg := sorted[off[i]:off[i+1]]
		if len(seg) > 1 {
			slices.SortFunc(seg, func(a, b int32) int {
				if c := cmp.Compare(height[b], height[a]); c != 0 {
					return c
				}
				return cmp.Compare(a, b)
			})
		}
	}
	hasDependent := make([]bool, n)
	for _, d := range dep {
		hasDependent[d] = true
	}
	var outputs []int32
	for i := range n {
		if !hasDependent[i] {
			outputs = append(outputs, int32(i))
		}
	}
	slices.SortStableFunc(outputs, func(a, b int32) int {
		if prio != nil && prio[a] != prio[b] {
			return cmp.Compare(prio[b], prio[a])
		}
		return cmp.Compare(height[b], height[a])
	})
	post := postOrder(off, sorted, outputs, n)
	if prio != nil && !allEqual(prio) {
		slices.SortStableFunc(post, func(a, b int32) int { return cmp.Compare(prio[b], prio[a]) })
	}
	rank := make([]int32, n)
	for r, i := range post {
		rank[i] = int32(r)
	}
	return rank
}

// heights returns, per node, the number of nodes on its longest dependency chain (itself
// included), by an iterative depth-first walk.
func heights(off, dep []int32) []int32 {
	n := len(off) - 1
	height := make([]int32, n) // 0: not visited yet
	next := make([]int32, n)
	var stack []int32
	for root := range n {
		if height[root] != 0 {
			continue
		}
		stack = append(stack[:0], int32(root))
		height[root] = -1 // on the stack
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			if p := off[v] + next[v]; p < off[v+1] {
				next[v]++
				if d := dep[p]; height[d] == 0 {
					height[d] = -1
					stack = append(stack, d)
				}
				continue
			}
			stack = stack[:len(stack)-1]
			h := int32(1)
			for _, d := range dep[off[v]:off[v+1]] {
				h = max(h, height[d]+1)
			}
			height[v] = h
		}
	}
	return height
}

// postOrder walks from each output through its (sorted) dependencies and returns the nodes
// in post-order: every node after all of its dependencies.
func postOrder(off, dep []int32, outputs []int32, n int) []int32 {
	const (
		fresh = iota
		open
		done
	)
	mark := make([]uint8, n)
	next := make([]int32, n)
	post := make([]int32, 0, n)
	var stack []int32
	for _, root := range outputs {
		if mark[root] != fresh {
			continue
		}
		stack = append(stack[:0], root)
		mark[root] = open
		for len(stack) > 0 {
			v := stack[len(stack)-1]
			if p := off[v] + next[v]; p < off[v+1] {
				next[v]++
				if d := dep[p]; mark[d] == fresh {
					mark[d] = open
					stack = append(stack, d)
				}
				continue
			}
			stack = stack[:len(stack)-1]
			mark[v] = done
			post = append(post, v)
		}
	}
	for i := range n { // only reachable on a cyclic input; keep the result total
		if mark[i] != done {
			post = append(post, int32(i))
		}
	}
	return post
}

func allEqual(p []int) bool {
	for _, v := range p[1:] {
		if v != p[0] {
			return false
		}
	}
	return true
}
