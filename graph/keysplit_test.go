package graph

import "testing"

func TestKeySplit(t *testing.T) {
	cases := map[string]string{
		"inc-abc123def456":                     "inc",
		"inc-1f3a9c0b7e2d4a6b8c9d0e1f2a3b4c5d": "inc",
		"sum-3":                                "sum",
		"x":                                    "x",
		"('x', 0, 1)":                          "x",
		"(\"read-csv\", 3)":                    "read",
		"read-parquet-0a1b2c3d":                "read-parquet",
		"read-parquet-deadbeef":                "read-parquet",
		"my-task-name-12":                      "my-task-name",
		"load_5f0c3e4a9b1d2e7f":                "load",
		"load_x":                               "load_x",
		"0123456789abcdef0123456789abcdef":     "data",
		"":                                     "Other",
		"()":                                   "Other",
	}
	for key, want := range cases {
		if got := KeySplit(key); got != want {
			t.Errorf("KeySplit(%q) = %q, want %q", key, got, want)
		}
	}
	if g := GroupOf(&Task{Key: "inc-1", Group: "mine"}); g != "mine" {
		t.Errorf("GroupOf ignores Group: %q", g)
	}
}

func BenchmarkKeySplit(b *testing.B) {
	for b.Loop() {
		KeySplit("read-parquet-0a1b2c3d4e5f")
	}
}
