package scheduler

import (
	"testing"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Samples fold into one tree per group; the cluster tree holds every group; a frame's count is
// the samples that passed through it.
func TestProfileFoldsSamplesPerGroup(t *testing.T) {
	var p profiler
	p.ingest(&wire.Msg{Samples: []wire.ProfileItem{
		{Group: "load", Stack: "main;read;decode", Count: 3},
		{Group: "load", Stack: "main;read", Count: 2},
		{Group: "sum", Stack: "add", Count: 5},
	}})
	snap := p.snapshot("")
	load := snap.Groups["load"]
	if load == nil || load.Count != 5 {
		t.Fatalf("load: %+v", load)
	}
	main := load.Children[0]
	if main.Name != "main" || main.Count != 5 || main.Children[0].Name != "read" || main.Children[0].Count != 5 {
		t.Fatalf("main: %+v", main)
	}
	if dec := main.Children[0].Children[0]; dec.Name != "decode" || dec.Count != 3 {
		t.Fatalf("decode: %+v", dec)
	}
	if snap.Cluster.Count != 10 || len(snap.Cluster.Children) != 2 {
		t.Fatalf("cluster: %+v", snap.Cluster)
	}
	if only := p.snapshot("sum"); len(only.Groups) != 1 || only.Groups["sum"].Count != 5 {
		t.Fatalf("one group: %+v", only.Groups)
	}
}

// The tree is bounded: samples that need a frame beyond the budget are counted, not kept.
func TestProfileIsBounded(t *testing.T) {
	var p profiler
	p.ingest(&wire.Msg{})
	p.budget = 2
	p.ingest(&wire.Msg{Samples: []wire.ProfileItem{{Group: "g", Stack: "a;b", Count: 1}, {Group: "g", Stack: "a;c", Count: 4}}})
	if p.dropped != 4 {
		t.Fatalf("dropped %d, want 4", p.dropped)
	}
	if n := p.snapshot("g").Groups["g"].Children[0].Children; len(n) != 1 || n[0].Name != "b" {
		t.Fatalf("kept %+v", n)
	}
}

// The recorder's ring keeps the newest runs, oldest first, and counts what it pushed out.
func TestRecorderRingKeepsTheNewest(t *testing.T) {
	var r ring[int]
	for i := range 7 {
		r.add(i, 5)
	}
	var got []int
	r.each(func(v int) { got = append(got, v) })
	if len(got) != 5 || got[0] != 2 || got[4] != 6 {
		t.Fatalf("ring %v, want [2 3 4 5 6]", got)
	}
}
