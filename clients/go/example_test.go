package shoal_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	shoal "github.com/shoal-dev/shoal/clients/go"
)

// Typed functions are declared once, at package level: the declaration registers them in the
// workers of every cluster this program starts, and their Call methods add tasks to graphs.
var (
	Square = shoal.Func("example_square", func(ctx context.Context, x int64) (int64, error) {
		return x * x, nil
	})
	Sum = shoal.Func("example_sum", func(ctx context.Context, xs []int64) (int64, error) {
		var s int64
		for _, x := range xs {
			s += x
		}
		return s, nil
	})
	Div = shoal.Func2("example_div", func(ctx context.Context, a, b int64) (int64, error) {
		if b == 0 {
			return 0, ErrDivByZero
		}
		return a / b, nil
	})
)

// ErrDivByZero keeps its identity across the cluster: errors.Is works on the client.
var ErrDivByZero = errors.New("example: division by zero")

func init() { shoal.RegisterError(ErrDivByZero) }

// The program is its own cluster: main (here TestMain) calls shoal.Main first, and
// NewLocalCluster re-executes the program as a scheduler and workers.
func Example() {
	ctx := context.Background()
	cluster, err := shoal.NewLocalCluster(ctx, shoal.Workers(2))
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	g := shoal.NewGraph()
	parts := shoal.Map(g, Square, []int64{1, 2, 3}) // []shoal.Ref[int64]
	total := Sum.Call(g, shoal.Collect(parts))      // shoal.Ref[int64]
	v, err := shoal.Get(ctx, cluster.Client(), g, total)
	fmt.Println(v, err)
	// Output: 14 <nil>
}

// Results of many tasks as they complete, and errors that keep their identity.
func ExampleAsCompleted() {
	ctx := context.Background()
	cluster, err := shoal.NewLocalCluster(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	c := cluster.Client()

	g := shoal.NewGraph()
	var quotients []shoal.Ref[int64]
	for _, d := range []int64{1, 2, 0, 5} {
		quotients = append(quotients, Div.Call(g, shoal.Lit[int64](100), shoal.Lit(d)))
	}
	futs, err := shoal.SubmitAll(ctx, c, g, quotients)
	if err != nil {
		log.Fatal(err)
	}
	var lines []string
	for f := range shoal.AsCompleted(ctx, futs) {
		v, err := f.Get(ctx)
		switch {
		case errors.Is(err, ErrDivByZero):
			lines = append(lines, "division by zero")
		case err != nil:
			log.Fatal(err)
		default:
			lines = append(lines, fmt.Sprint(v))
		}
		f.Release()
	}
	slices.Sort(lines) // completion order varies
	fmt.Println(lines)
	// Output: [100 20 50 division by zero]
}

// Go values and Arrow tables put on the workers, then used as arguments.
func ExampleScatter() {
	ctx := context.Background()
	cluster, err := shoal.NewLocalCluster(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	c := cluster.Client()

	futs, err := shoal.Scatter(ctx, c, int64(10), int64(20))
	if err != nil {
		log.Fatal(err)
	}
	g := shoal.NewGraph()
	q := Div.Call(g, futs[1].Ref(), futs[0].Ref())
	fmt.Println(shoal.Get(ctx, c, g, q))
	// Output: 2 <nil>
}

// A function registered elsewhere (here a built-in of every worker) and a Python function,
// declared with the types they take and give. (Not run: it needs a cluster with Python.)
func ExamplePython() {
	ctx := context.Background()
	cluster, err := shoal.NewLocalCluster(ctx, shoal.PythonExecutable(".venv/bin/python"))
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	rowCount := shoal.Extern[arrow.Table, int64]("row_count")
	table := shoal.Python[map[string]any, arrow.Table]("pyarrow.table")
	mean := shoal.Python[[]int64, float64]("statistics.fmean")

	g := shoal.NewGraph()
	t := table.Call(g, shoal.Lit(map[string]any{"x": []int64{1, 2, 3}}))
	n, err := shoal.Get(ctx, cluster.Client(), g, rowCount.Call(g, t))
	fmt.Println(n, err) // 3 <nil>
	m, err := shoal.Get(ctx, cluster.Client(), g, mean.Call(g, shoal.Collect(shoal.Map(g, Square, []int64{1, 2, 3}))))
	fmt.Println(m, err) // 4.666666666666667 <nil>
}

// Annotations are task options.
func ExampleTaskOption() {
	g := shoal.NewGraph()
	r := Square.Call(g, shoal.Lit[int64](4),
		shoal.Named("square-four"), shoal.Priority(10), shoal.Retries(2),
		shoal.Resources(map[string]float64{"GPU": 1}), shoal.OnWorkers("local-0"))
	t := g.Tasks()[0]
	fmt.Println(r.Key(), t.Func, t.Priority, t.Retries, t.Resources, t.Workers)
	// Output: square-four example_square 10 2 map[GPU:1] [local-0]
}

// Collect passes many results as one slice argument.
func ExampleCollect() {
	g := shoal.NewGraph()
	parts := shoal.Map(g, Square, []int64{1, 2, 3}, shoal.Named("sq"))
	Sum.Call(g, shoal.Collect(parts), shoal.Named("total"))
	for _, t := range g.Tasks() {
		fmt.Println(t.Key, t.Func, len(t.Args))
	}
	// Output:
	// sq-0 example_square 1
	// sq-1 example_square 1
	// sq-2 example_square 1
	// total example_sum#collect 4
}
