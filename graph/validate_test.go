package graph

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func gotask(key string, deps ...string) Task {
	t := Task{Key: key, Kind: KindGo, Func: "f"}
	for _, d := range deps {
		t.Args = append(t.Args, Ref(d))
	}
	return t
}

func wantCode(t *testing.T, err error, code string, mention ...string) {
	t.Helper()
	var ge *Error
	if !errors.As(err, &ge) {
		t.Fatalf("want *graph.Error with code %s, got %v", code, err)
	}
	if ge.Code != code {
		t.Fatalf("code = %s, want %s (%s)", ge.Code, code, ge.Message)
	}
	for _, m := range mention {
		if !strings.Contains(ge.Message, m) {
			t.Errorf("message %q does not mention %q", ge.Message, m)
		}
	}
}

func TestValidateOK(t *testing.T) {
	tasks := []Task{gotask("a"), gotask("b", "a"), gotask("c", "a", "b", "old"), gotask("a")}
	if err := Validate(tasks, func(k string) bool { return k == "old" }); err != nil {
		t.Fatal(err)
	}
}

func TestValidateCycle(t *testing.T) {
	tasks := []Task{gotask("root"), gotask("x", "root", "z"), gotask("y", "x"), gotask("z", "y"), gotask("out", "z")}
	err := Validate(tasks, nil)
	wantCode(t, err, CodeGraphCycle)
	msg := err.(*Error).Message
	if !strings.Contains(msg, `"x"`) && !strings.Contains(msg, `"y"`) && !strings.Contains(msg, `"z"`) {
		t.Fatalf("cycle message names no key on the cycle: %s", msg)
	}
	wantCode(t, Validate([]Task{gotask("self", "self")}, nil), CodeGraphCycle, `"self"`)
}

func TestValidateMissing(t *testing.T) {
	wantCode(t, Validate([]Task{gotask("a"), gotask("b", "a", "ghost")}, nil), CodeMissingDependency, `"b"`, `"ghost"`)
}

func TestValidateInvalid(t *testing.T) {
	cases := map[string]Task{
		"empty key":      {Kind: KindGo, Func: "f"},
		"unknown kind":   {Key: "k", Kind: "rust", Func: "f"},
		"go payload":     {Key: "k", Kind: KindGo, Func: "f", Payload: []byte{1}},
		"py no func":     {Key: "k", Kind: KindPy, Payload: []byte{1}},
		"neg retries":    {Key: "k", Kind: KindGo, Func: "f", Retries: -1},
		"bad resource":   {Key: "k", Kind: KindGo, Func: "f", Resources: map[string]float64{"GPU": -1}},
		"empty dep name": {Key: "k", Kind: KindPy, Func: "h", Deps: []string{""}},
	}
	for name, task := range cases {
		t.Run(name, func(t *testing.T) { wantCode(t, Validate([]Task{task}, nil), CodeInvalidTask) })
	}
}

func TestValidateDuplicate(t *testing.T) {
	a2 := gotask("a")
	a2.Func = "g"
	wantCode(t, Validate([]Task{gotask("a"), a2}, nil), CodeKeyConflict, `"a"`)
}

func TestDeps(t *testing.T) {
	task := Task{Key: "k", Kind: KindGo, Func: "f", Args: []Arg{Ref("a"), Lit(3), Ref("b"), Ref("a")}}
	if got := Deps(&task); strings.Join(got, ",") != "a,b" {
		t.Fatalf("Deps = %v", got)
	}
	task.Deps = []string{"z"}
	if got := Deps(&task); strings.Join(got, ",") != "z" {
		t.Fatalf("explicit Deps = %v", got)
	}
}

func TestSame(t *testing.T) {
	a := Task{Key: "k", Kind: KindGo, Func: "f", Args: []Arg{Lit(int64(3)), Ref("x")}, Resources: map[string]float64{"GPU": 1}}
	b := a
	b.Args = []Arg{Lit(int64(3)), Ref("x")}
	if !Same(&a, &b) {
		t.Fatal("identical tasks differ")
	}
	b.Args = []Arg{Lit(int64(4)), Ref("x")}
	if Same(&a, &b) {
		t.Fatal("different literal not noticed")
	}
}

// ValidateBatch gives each task's dependencies as batch indexes: -1 for a known key, the
// first occurrence for a key the batch holds twice; a cycle through a duplicated key is found.
func TestValidateBatchIndexes(t *testing.T) {
	tasks := []Task{
		gotask("b", "old"),
		gotask("c", "b", "old"),
		gotask("b", "old"), // an identical duplicate
		gotask("d", "b", "c"),
	}
	b, err := ValidateBatch(tasks, func(k string) bool { return k == "old" })
	if err != nil {
		t.Fatal(err)
	}
	if !b.Dups {
		t.Fatal("the duplicate was not reported")
	}
	want := [][]int32{{-1}, {0, -1}, {-1}, {0, 1}}
	for i, w := range want {
		got := b.DepAt[b.DepOff[i]:b.DepOff[i+1]]
		if !slices.Equal(got, w) {
			t.Errorf("task %d (%s): deps at %v, want %v", i, tasks[i].Key, got, w)
		}
	}
	if b, _ := ValidateBatch(tasks[:2], func(k string) bool { return k == "old" }); b.Dups {
		t.Error("a batch without duplicates reported some")
	}
	cyc := []Task{gotask("x", "y"), gotask("y", "x"), gotask("x", "y")}
	_, err = ValidateBatch(cyc, nil)
	wantCode(t, err, CodeGraphCycle)
	if !strings.Contains(err.Error(), `"x"`) && !strings.Contains(err.Error(), `"y"`) {
		t.Errorf("cycle message names no key on it: %v", err)
	}
}
