// Command gopython is a Go driver calling Python tasks: Go tasks and Python functions in one
// graph, their results flowing both ways (msgpack scalars and lists, pandas DataFrames as
// Arrow tables). The workers run the Python functions in their Python executors, so the
// cluster needs an interpreter that can import shoal, pandas and pyarrow; from the root of
// the repository, after `make venv`:
//
//	go run ./examples/gopython --python .venv/bin/python
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"path/filepath"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	shoal "github.com/shoal-dev/shoal/clients/go"
)

// Go task functions, registered in the workers of this binary.
var (
	Simulate = shoal.Func("sim_trial", func(ctx context.Context, seed int64) (float64, error) {
		return math.Sin(float64(seed)) * 10, nil // stand-in for real work
	})
	BestRow = shoal.Func("best_row", func(ctx context.Context, t arrow.Table) (string, error) {
		rec := array.NewTableReader(t, 1)
		defer rec.Release()
		if !rec.Next() {
			return "", fmt.Errorf("empty table")
		}
		r := rec.RecordBatch()
		return fmt.Sprintf("%s (%s/%s)", r.Column(0).ValueStr(0), r.Column(1).ValueStr(0), r.Column(2).ValueStr(0)), nil
	})
)

// Python functions, declared by module and name with the types they take and give.
var (
	Describe = shoal.Python[[]float64, string]("pytasks.describe")
	Frame    = shoal.Python[map[string]any, arrow.Table]("pytasks.frame")
	Scale    = shoal.Python2[float64, float64, float64]("pytasks.scale")
)

func main() {
	shoal.Main()
	python := flag.String("python", os.Getenv("SHOAL_PYTHON"), "Python interpreter of the workers (needs shoal, pandas, pyarrow)")
	pydir := flag.String("pydir", "examples/gopython", "directory holding pytasks.py")
	flag.Parse()
	if err := run(context.Background(), *python, *pydir); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, python, pydir string) error {
	dir, err := filepath.Abs(pydir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "pytasks.py")); err != nil {
		return fmt.Errorf("pytasks.py not found (run from the repository root or pass --pydir): %w", err)
	}
	os.Setenv("PYTHONPATH", dir) // the cluster's processes, and their Python executors, inherit it
	opts := []shoal.ClusterOption{shoal.Workers(2)}
	if python != "" {
		opts = append(opts, shoal.PythonExecutable(python))
	}
	cluster, err := shoal.NewLocalCluster(ctx, opts...)
	if err != nil {
		return err
	}
	defer cluster.Close()
	c := cluster.Client()

	g := shoal.NewGraph()
	trials := shoal.Map(g, Simulate, []int64{1, 2, 3, 4, 5, 6, 7, 8}) // Go
	scaled := Scale.Call(g, trials[0], shoal.Lit(100.0))              // Go result → Python
	summary := Describe.Call(g, shoal.Collect(trials))                // many Go results → a Python list
	table := Frame.Call(g, shoal.Lit(map[string]any{                  // Python → pandas → Arrow
		"team": []string{"ants", "bees", "crows"}, "hits": []int64{3, 9, 4}, "trials": []int64{10, 12, 5},
	}))
	best := BestRow.Call(g, table) // Arrow from Python → a Go task

	s, err := shoal.Get(ctx, c, g, summary)
	if err != nil {
		return err
	}
	fmt.Println("Python describes the Go trials:", s)
	x, err := shoal.Get(ctx, c, g, scaled)
	if err != nil {
		return err
	}
	fmt.Printf("Python scaled trial 1: %.3f\n", x)
	b, err := shoal.Get(ctx, c, g, best)
	if err != nil {
		return err
	}
	fmt.Println("Go read Python's DataFrame; best team:", b)
	return nil
}
