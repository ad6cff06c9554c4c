package scheduler

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected actions in testdata/*.txt")

// TestScenarios runs every script in testdata/: lines of events (and introspection
// commands) in, each followed by the actions the core produced, prefixed "-> ". With
// -rewrite the expected lines are regenerated from what the core does now.
//
// Syntax (values may be Go-quoted strings; lists are comma-separated):
//
//	config saturation=inf steal-interval=0 threshold=3 story=16 stealing=off dispatch-batch=10
//	worker-joined id=1 name=a addr=a:1 nthreads=2 mem=1000 funcs=inc,add res=GPU:1
//	worker-left id=1 reason="exit code 137" graceful=false
//	update-graph client=1 id=7 wanted=c
//	  task a func=inc
//	  task b func=add deps=a,x prio=1 retries=2 workers=a res=GPU:1 kind=py group=g
//	wanted|release-keys|cancel-keys client=1 keys=a,b
//	client-joined|client-left client=1
//	scattered client=1 w=1 keys=a:100,b:8
//	task-finished w=1 key=a nbytes=8 enc=msgpack start=0 stop=1000000
//	task-erred w=1 key=a code=task-error msg=boom
//	add-replica w=2 keys=a:8
//	missing-data reporter=2 key=a from=1
//	steal-response w=1 key=a accepted=true
//	reschedule w=1 keys=a,b
//	heartbeat w=1 now=5 memory=100
//	tick now=100000000
//	dispatch             (the next batch of queued root tasks; "-> dispatch-pending" after an
//	                     event's actions says the core stopped at dispatch-batch with more)
//	state a b            (introspection: state, location and error of each key)
//	story a | counts | workers | groups
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runScenario(t, f) })
	}
}

func runScenario(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var out []string
	r := &scenario{cfg: DefaultCoreConfig()}
	for i := 0; i < len(lines); {
		line := lines[i]
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			out = append(out, line)
			i++
			continue
		}
		if strings.HasPrefix(line, "-> ") || strings.HasPrefix(line, "  ") {
			t.Fatalf("%s:%d: unexpected line %q", path, i+1, line)
		}
		start := i
		block := []string{line}
		for i++; i < len(lines) && strings.HasPrefix(lines[i], "  "); i++ {
			block = append(block, lines[i])
		}
		var want []string
		for ; i < len(lines) && strings.HasPrefix(lines[i], "-> "); i++ {
			want = append(want, strings.TrimPrefix(lines[i], "-> "))
		}
		got := r.exec(t, path, start+1, block)
		if !*rewrite && !slices.Equal(got, want) {
			t.Errorf("%s:%d: %s\n got:\n  %s\n want:\n  %s", path, start+1, line,
				strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		out = append(out, block...)
		for _, g := range got {
			out = append(out, "-> "+g)
		}
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type scenario struct {
	cfg  CoreConfig
	core *Core
}

func (r *scenario) c() *Core {
	if r.core == nil {
		r.core = NewCore(r.cfg)
	}
	return r.core
}

func (r *scenario) exec(t *testing.T, path string, lineno int, block []string) (got []string) {
	cmd, args := parseLine(t, block[0])
	a := argMap{t: t, where: fmt.Sprintf("%s:%d", path, lineno), m: args}
	defer func() {
		if p := recover(); p != nil {
			got = append(got, fmt.Sprintf("panic: %v", p))
			r.core = nil
		}
	}()
	var ev Event
	switch cmd {
	case "config":
		r.configure(a)
		return nil
	case "worker-joined":
		ev = EvWorkerJoined{Worker: WorkerID(a.int("id")), Name: a.str("name"), Addr: a.str("addr"),
			NThreads: a.intOr("nthreads", 1), MemoryLimit: int64(a.intOr("mem", 0)),
			Functions: a.listOr("funcs", "f"), Resources: a.res("res"), Holds: a.items("holds"),
			Replaces: WorkerID(a.intOr("replaces", 0)), Now: int64(a.intOr("now", 0)), Asked: int64(a.intOr("asked", 0)),
			Running: a.list("running"), Seceded: secededFlags(a.list("running"), a.list("seceded"))}
	case "workers-joined": // the workers of the following lines, in one event
		var joins []EvWorkerJoined
		for _, l := range block[1:] {
			_, m := parseLine(t, strings.TrimSpace(l))
			b := argMap{t: t, where: a.where, m: m}
			joins = append(joins, EvWorkerJoined{Worker: WorkerID(b.int("id")), Name: b.str("name"), Addr: b.str("addr"),
				NThreads: b.intOr("nthreads", 1), Functions: b.listOr("funcs", "f"), Holds: b.items("holds"),
				Running: b.list("running"), Seceded: secededFlags(b.list("running"), b.list("seceded"))})
		}
		ev = EvWorkersJoined{Joins: joins}
	case "worker-left":
		ev = EvWorkerLeft{Worker: WorkerID(a.int("id")), Reason: a.str("reason"), Graceful: a.bool("graceful")}
	case "client-joined":
		ev = EvClientJoined{Client: ClientID(a.int("client"))}
	case "client-left":
		ev = EvClientLeft{Client: ClientID(a.int("client"))}
	case "update-graph":
		var tasks []graph.Task
		for _, l := range block[1:] {
			tasks = append(tasks, parseTask(t, a.where, strings.TrimSpace(l)))
		}
		ev = EvUpdateGraph{Client: ClientID(a.int("client")), ID: uint64(a.intOr("id", 0)), Tasks: tasks, Wanted: a.list("wanted")}
	case "wanted":
		ev = EvWanted{Client: ClientID(a.int("client")), Keys: a.list("keys")}
	case "release-keys":
		ev = EvReleaseKeys{Client: ClientID(a.int("client")), Keys: a.list("keys")}
	case "cancel-keys":
		ev = EvCancelKeys{Client: ClientID(a.int("client")), Keys: a.list("keys")}
	case "scattered":
		ev = EvScattered{Client: ClientID(a.int("client")), Worker: WorkerID(a.int("w")), Items: a.items("keys")}
	case "task-finished":
		ev = EvTaskFinished{Worker: WorkerID(a.int("w")), Key: a.str("key"), NBytes: int64(a.intOr("nbytes", 0)),
			Encoding: a.strOr("enc", "msgpack"), Start: int64(a.intOr("start", 0)), Stop: int64(a.intOr("stop", 0)),
			Holds: a.list("holds")}
	case "task-erred":
		ev = EvTaskErred{Worker: WorkerID(a.int("w")), Key: a.str("key"),
			Err: &wire.Error{Code: a.strOr("code", wire.CodeTaskError), Message: a.str("msg")}}
	case "add-replica":
		ev = EvAddReplica{Worker: WorkerID(a.int("w")), Items: a.items("keys")}
	case "missing-data":
		ev = EvMissingData{Reporter: WorkerID(a.int("reporter")), Key: a.str("key"), From: WorkerID(a.intOr("from", -1)),
			Cause: a.strOr("cause", "")}
	case "steal-response":
		ev = EvStealResponse{Worker: WorkerID(a.int("w")), Key: a.str("key"), Accepted: a.bool("accepted")}
	case "reschedule":
		ev = EvReschedule{Worker: WorkerID(a.int("w")), Keys: a.list("keys")}
	case "heartbeat":
		ev = EvHeartbeat{Worker: WorkerID(a.int("w")), Now: int64(a.intOr("now", 0)), Memory: int64(a.intOr("memory", 0)),
			Unhealthy: a.strOr("unhealthy", ""), Asked: int64(a.intOr("asked", 0))}
	case "tick":
		ev = EvTick{Now: int64(a.int("now"))}
	case "dispatch":
		ev = EvDispatch{}
	case "restart":
		ev = EvRestart{Reason: a.str("reason")}
	case "retire":
		var ids []WorkerID
		for _, s := range a.list("workers") {
			n, _ := strconv.Atoi(s)
			ids = append(ids, WorkerID(n))
		}
		ev = EvRetire{Workers: ids}
	case "replicate":
		ev = EvReplicate{Keys: a.list("keys"), N: a.int("n")}
	case "rebalance":
		ev = EvRebalance{Keys: a.list("keys")}
	case "long-running":
		ev = EvLongRunning{Worker: WorkerID(a.int("w")), Key: a.str("key")}
	default:
		return r.introspect(t, a.where, cmd, strings.Fields(block[0])[1:])
	}
	for _, act := range r.c().Handle(ev, nil) {
		got = append(got, formatAction(act))
	}
	if r.c().DispatchPending() {
		got = append(got, "dispatch-pending")
	}
	return got
}

func (r *scenario) configure(a argMap) {
	if a.has("saturation") {
		if a.str("saturation") == "inf" {
			r.cfg.SaturationFactor = math.Inf(1)
		} else {
			r.cfg.SaturationFactor = a.float("saturation")
		}
	}
	if a.has("steal-interval") {
		r.cfg.StealInterval = time.Duration(a.int("steal-interval"))
	}
	if a.has("stealing") {
		r.cfg.DisableStealing = a.str("stealing") == "off"
	}
	if a.has("threshold") {
		r.cfg.KilledWorkerThreshold = a.int("threshold")
	}
	if a.has("fetch-failures") {
		r.cfg.FetchFailureLimit = a.int("fetch-failures")
	}
	if a.has("story") {
		r.cfg.StoryLength = a.int("story")
	}
	if a.has("dispatch-batch") {
		r.cfg.DispatchBatch = a.int("dispatch-batch")
	}
	if a.has("heartbeat-timeout") {
		d, err := time.ParseDuration(a.str("heartbeat-timeout"))
		if err != nil {
			a.t.Fatalf("%s: heartbeat-timeout: %v", a.where, err)
		}
		r.cfg.HeartbeatTimeout = d
	}
	r.core = nil
}

func (r *scenario) introspect(t *testing.T, where, cmd string, args []string) []string {
	c := r.c()
	var out []string
	switch cmd {
	case "state":
		for _, k := range args {
			out = append(out, describe(c, k))
		}
	case "story":
		for _, k := range args {
			ti, ok := c.TaskInfo(k)
			if !ok {
				out = append(out, k+": unknown")
				continue
			}
			for _, s := range ti.Story {
				out = append(out, fmt.Sprintf("%s: %s", k, s))
			}
		}
	case "counts":
		var parts []string
		for s, n := range c.Counts() {
			if n > 0 && State(s) != Forgotten {
				parts = append(parts, fmt.Sprintf("%s=%d", State(s), n))
			}
		}
		st := c.Stats()
		parts = append(parts, fmt.Sprintf("alive=%d", st.TasksAlive))
		out = append(out, strings.Join(parts, " "))
	case "retired":
		for _, s := range args {
			n, _ := strconv.Atoi(s)
			out = append(out, fmt.Sprintf("w%d retired=%v", n, c.Retired(WorkerID(n))))
		}
	case "workers":
		for _, w := range c.Workers() {
			out = append(out, fmt.Sprintf("w%d %s processing=%d nkeys=%d nbytes=%d occupancy=%v", w.ID, w.Name,
				w.Processing, w.NKeys, w.NBytes, w.Occupancy))
		}
	case "groups":
		for _, g := range c.Groups() {
			var parts []string
			for s, n := range g.States {
				if n > 0 {
					parts = append(parts, fmt.Sprintf("%s=%d", State(s), n))
				}
			}
			out = append(out, fmt.Sprintf("%s total=%d %s nbytes=%d mean=%v deps=%s", g.Name, g.Total,
				strings.Join(parts, " "), g.NBytes, g.MeanDuration, strings.Join(g.Dependencies, ",")))
		}
	default:
		t.Fatalf("%s: unknown command %q", where, cmd)
	}
	return out
}

func describe(c *Core, k string) string {
	ti, ok := c.TaskInfo(k)
	if !ok {
		return k + ": forgotten"
	}
	s := fmt.Sprintf("%s: %s", k, ti.State)
	if ti.Worker >= 0 {
		s += fmt.Sprintf(" on=%d", ti.Worker)
	}
	if len(ti.WhoHas) > 0 {
		s += " who_has=" + joinIDs(ti.WhoHas)
	}
	if ti.Suspicious > 0 {
		s += fmt.Sprintf(" suspicious=%d", ti.Suspicious)
	}
	if ti.Err != nil {
		s += " err=" + strconv.Quote(ti.Err.Error())
	}
	return s
}

func joinIDs(ws []WorkerID) string {
	parts := make([]string, len(ws))
	for i, w := range ws {
		parts[i] = strconv.Itoa(int(w))
	}
	return strings.Join(parts, "|")
}

func formatAction(a Action) string {
	switch a := a.(type) {
	case *ActCompute:
		s := fmt.Sprintf("compute w=%d key=%s order=%d", a.Worker, a.Key, a.Order)
		if len(a.Deps) > 0 {
			parts := make([]string, len(a.Deps))
			for i, d := range a.Deps {
				parts[i] = fmt.Sprintf("%s@%s:%d", d.Key, joinIDs(d.Workers), d.NBytes)
			}
			s += " deps=" + strings.Join(parts, ",")
		}
		return s
	case ActFree:
		return fmt.Sprintf("free w=%d keys=%s", a.Worker, strings.Join(a.Keys, ","))
	case ActSteal:
		return fmt.Sprintf("steal victim=%d key=%s", a.Victim, a.Key)
	case *ActKeyState:
		s := fmt.Sprintf("key-state client=%d key=%s state=%s", a.Client, a.Key, a.State)
		if a.State == "memory" {
			s += fmt.Sprintf(" w=%d nbytes=%d enc=%s", a.Worker, a.NBytes, a.Encoding)
		}
		if a.Err != nil {
			s += " err=" + strconv.Quote(a.Err.Error())
		}
		return s
	case ActAcquire:
		parts := make([]string, len(a.Deps))
		for i, d := range a.Deps {
			parts[i] = fmt.Sprintf("%s@%s:%d", d.Key, joinIDs(d.Workers), d.NBytes)
		}
		return fmt.Sprintf("acquire w=%d deps=%s", a.Worker, strings.Join(parts, ","))
	case ActRemoveWorker:
		return fmt.Sprintf("remove-worker w=%d reason=%q", a.Worker, a.Reason)
	case ActGraphRejected:
		return fmt.Sprintf("graph-rejected client=%d id=%d keys=%s err=%s", a.Client, a.ID,
			strings.Join(a.Keys, ","), strconv.Quote(a.Err.Error()))
	}
	return fmt.Sprintf("%T %+v", a, a)
}

// ---- parsing ----

func parseLine(t *testing.T, line string) (string, map[string]string) {
	toks := tokenize(t, line)
	m := make(map[string]string)
	for _, tok := range toks[1:] {
		k, v, ok := strings.Cut(tok, "=")
		if !ok {
			v = ""
		}
		m[k] = v
	}
	return toks[0], m
}

// tokenize splits on spaces, keeping Go-quoted values (k="a b") whole and unquoted.
func tokenize(t *testing.T, line string) []string {
	var toks []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		end := strings.IndexByte(line, ' ')
		if end < 0 {
			end = len(line)
		}
		if eq := strings.Index(line, `="`); eq >= 0 && eq < end {
			q, err := strconv.QuotedPrefix(line[eq+1:])
			if err != nil {
				t.Fatalf("bad quoting in %q: %v", line, err)
			}
			v, _ := strconv.Unquote(q)
			toks = append(toks, line[:eq+1]+v)
			line = line[eq+1+len(q):]
			continue
		}
		toks = append(toks, line[:end])
		line = line[end:]
	}
	return toks
}

func parseTask(t *testing.T, where, line string) graph.Task {
	toks := tokenize(t, line)
	if len(toks) < 2 || toks[0] != "task" {
		t.Fatalf("%s: bad task line %q", where, line)
	}
	_, m := parseLine(t, "x "+strings.Join(toks[2:], " "))
	a := argMap{t: t, where: where, m: m}
	task := graph.Task{Key: toks[1], Kind: graph.Kind(a.strOr("kind", "go")), Func: a.strOr("func", "f"),
		Priority: a.intOr("prio", 0), Retries: a.intOr("retries", 0), Workers: a.list("workers"),
		Resources: a.res("res"), Group: a.str("group")}
	if p := a.str("payload"); p != "" {
		task.Payload = []byte(p)
	}
	for _, d := range a.list("deps") {
		if task.Kind == graph.KindGo {
			task.Args = append(task.Args, graph.Ref(d))
		} else {
			task.Deps = append(task.Deps, d)
		}
	}
	if task.Kind == graph.KindPy && task.Payload == nil {
		task.Payload = []byte("p")
	}
	return task
}

type argMap struct {
	t     *testing.T
	where string
	m     map[string]string
}

func (a argMap) has(k string) bool { _, ok := a.m[k]; return ok }
func (a argMap) str(k string) string {
	return a.m[k]
}
func (a argMap) strOr(k, def string) string {
	if v, ok := a.m[k]; ok {
		return v
	}
	return def
}
func (a argMap) int(k string) int {
	if !a.has(k) {
		a.t.Fatalf("%s: missing %s=", a.where, k)
	}
	return a.intOr(k, 0)
}
func (a argMap) intOr(k string, def int) int {
	v, ok := a.m[k]
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		a.t.Fatalf("%s: %s=%q: %v", a.where, k, v, err)
	}
	return n
}
func (a argMap) float(k string) float64 {
	f, err := strconv.ParseFloat(a.m[k], 64)
	if err != nil {
		a.t.Fatalf("%s: %s: %v", a.where, k, err)
	}
	return f
}
func (a argMap) bool(k string) bool { return a.m[k] == "true" || a.m[k] == "" && a.has(k) }
func (a argMap) list(k string) []string {
	if a.m[k] == "" {
		return nil
	}
	return strings.Split(a.m[k], ",")
}
func (a argMap) listOr(k, def string) []string {
	if !a.has(k) {
		return strings.Split(def, ",")
	}
	return a.list(k)
}
func (a argMap) res(k string) map[string]float64 {
	var out map[string]float64
	for _, kv := range a.list(k) {
		name, v, _ := strings.Cut(kv, ":")
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			a.t.Fatalf("%s: resource %q: %v", a.where, kv, err)
		}
		if out == nil {
			out = make(map[string]float64)
		}
		out[name] = f
	}
	return out
}
func (a argMap) items(k string) []wire.Item {
	var out []wire.Item
	for _, kv := range a.list(k) {
		key, n, _ := strings.Cut(kv, ":")
		nb, _ := strconv.Atoi(n)
		out = append(out, wire.Item{Key: key, Encoding: a.strOr("enc", "msgpack"), NBytes: int64(nb)})
	}
	return out
}
