package dashboard

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFeedDropsWhenFullAndCounts(t *testing.T) {
	var f Feed
	assert.False(t, f.Active())
	f.Publish(Event{Kind: EventTask}) // nobody listening: nothing happens
	assert.Zero(t, f.Dropped())

	ch, cancel := f.Subscribe(2)
	assert.True(t, f.Active())
	for range 5 {
		f.Publish(Event{Kind: EventTask})
	}
	assert.Len(t, ch, 2)
	assert.EqualValues(t, 3, f.Dropped())
	cancel()
	cancel() // idempotent
	assert.False(t, f.Active())
	f.Publish(Event{Kind: EventTask})
	assert.Len(t, ch, 2, "no delivery after cancel")
}

func TestFeedFansOut(t *testing.T) {
	var f Feed
	a, ca := f.Subscribe(1)
	b, cb := f.Subscribe(1)
	defer ca()
	defer cb()
	f.Publish(Event{Kind: EventRetry, Key: "k"})
	assert.Equal(t, "k", (<-a).Key)
	assert.Equal(t, "k", (<-b).Key)
}

func TestEventLogKeepsTheLastN(t *testing.T) {
	l := NewEventLog(3)
	assert.Empty(t, l.Last(10))
	for i := range 5 {
		l.Add(Event{Time: int64(i)})
	}
	got := l.Last(10)
	require.Len(t, got, 3)
	assert.Equal(t, []int64{2, 3, 4}, []int64{got[0].Time, got[1].Time, got[2].Time})
	got = l.Last(2)
	assert.Equal(t, []int64{3, 4}, []int64{got[0].Time, got[1].Time})
	assert.Empty(t, l.Last(-1))
}

func TestIsCluster(t *testing.T) {
	assert.False(t, Event{Kind: EventTask}.IsCluster())
	assert.False(t, Event{Kind: EventTransfer}.IsCluster())
	for _, k := range []EventKind{EventWorkerJoined, EventWorkerLeft, EventError, EventRetry} {
		assert.True(t, Event{Kind: k}.IsCluster(), k)
	}
}

func TestDifferDeltas(t *testing.T) {
	var d differ
	snap := newFakeSource().mu.snap
	full, delta := d.frames(snap)
	assert.True(t, full.Full)
	assert.Len(t, full.Workers, 2)
	assert.Len(t, delta.Workers, 2, "everything is new to the first delta")

	snap.Time++
	snap.Workers = snap.Workers[1:]
	snap.Groups = append([]GroupProgress(nil), snap.Groups...)
	snap.Groups[0].Done = 3
	snap.Groups = append(snap.Groups, GroupProgress{Name: "new"})
	_, delta = d.frames(snap)
	assert.Empty(t, delta.Workers)
	assert.Equal(t, []string{"127.0.0.1:9000"}, delta.WorkersRemoved)
	require.Len(t, delta.Groups, 2)
	assert.Equal(t, "load", delta.Groups[0].Name)
	assert.Equal(t, "new", delta.Groups[1].Name)
	assert.Empty(t, delta.GroupsRemoved)
}

func TestRateMeter(t *testing.T) {
	var r rateMeter
	const s = int64(1e9)
	assert.Zero(t, r.observe(0, 0))
	assert.InDelta(t, 100, r.observe(s/2, 50), 1e-9)
	assert.InDelta(t, 100, r.observe(s, 100), 1e-9)
	assert.InDelta(t, 0, r.observe(3*s, 100), 1e-9, "the window forgets old samples")
	assert.Zero(t, r.observe(2*s, 0), "a clock going backwards starts over")
}
