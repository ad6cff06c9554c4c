package logring

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRingKeepsTheLastLines(t *testing.T) {
	r := New(3, 0)
	for i := 0; i < 5; i++ {
		fmt.Fprintf(r, "line %d\n", i)
	}
	require.Equal(t, []string{"line 2", "line 3", "line 4"}, r.Last(0))
	require.Equal(t, []string{"line 4"}, r.Last(1))
	require.Equal(t, []string{"line 2", "line 3", "line 4"}, r.Last(10))
}

func TestRingJoinsPartialWritesAndBoundsBytes(t *testing.T) {
	r := New(100, 40)
	r.Write([]byte("abc"))
	r.Write([]byte("def\nghi\n"))
	require.Equal(t, []string{"abcdef", "ghi"}, r.Last(0))
	r.Write([]byte(strings.Repeat("x", 100) + "\n")) // cut to max/4
	r.Write([]byte(strings.Repeat("y", 10) + "\n"))
	r.Write([]byte(strings.Repeat("z", 10) + "\n"))
	r.Write([]byte(strings.Repeat("w", 10) + "\n"))
	got := r.Last(0)
	total := 0
	for _, l := range got {
		total += len(l)
	}
	require.LessOrEqual(t, total, 40)
	require.Equal(t, strings.Repeat("w", 10), got[len(got)-1])
	require.NotContains(t, got, "abcdef", "the oldest lines go first when bytes run out")
}
