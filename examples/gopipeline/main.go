// Command gopipeline is a typed Shoal pipeline in one Go program that is its own cluster:
// it counts the words of a few documents in parallel, merges the counts, and prints the most
// frequent words. Run it from anywhere in the repository:
//
//	go run ./examples/gopipeline
//
// shoal.Main at the top of main makes the processes NewLocalCluster starts (this same
// binary) a scheduler and workers that know the functions declared below; the compiler checks
// every call against their types.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"slices"
	"strings"
	"unicode"

	shoal "github.com/shoal-dev/shoal/clients/go"
)

// Task functions, declared once: the declaration registers them in the workers, and Call,
// Map and Collect build typed tasks from them.
var (
	// CountWords counts the words of one document.
	CountWords = shoal.Func("count_words", func(ctx context.Context, doc string) (map[string]int64, error) {
		counts := map[string]int64{}
		for _, w := range strings.FieldsFunc(strings.ToLower(doc), func(r rune) bool { return !unicode.IsLetter(r) }) {
			counts[w]++
		}
		return counts, nil
	})
	// Merge adds up word counts.
	Merge = shoal.Func("merge_counts", func(ctx context.Context, parts []map[string]int64) (map[string]int64, error) {
		total := map[string]int64{}
		for _, p := range parts {
			for w, n := range p {
				total[w] += n
			}
		}
		return total, nil
	})
	// Top keeps the n most frequent words, most frequent first.
	Top = shoal.Func2("top_words", func(ctx context.Context, counts map[string]int64, n int) ([]string, error) {
		words := make([]string, 0, len(counts))
		for w := range counts {
			words = append(words, w)
		}
		slices.SortFunc(words, func(a, b string) int {
			if counts[a] != counts[b] {
				return int(counts[b] - counts[a])
			}
			return strings.Compare(a, b)
		})
		out := make([]string, 0, n)
		for _, w := range words[:min(n, len(words))] {
			out = append(out, fmt.Sprintf("%s=%d", w, counts[w]))
		}
		return out, nil
	})
)

var docs = []string{
	"The scheduler places tasks; the workers run the tasks.",
	"Workers move results to each other, the scheduler never carries them.",
	"A task that raises is erred, and the error reaches the client.",
	"The client holds futures; the scheduler keeps results while futures need them.",
}

func main() {
	shoal.Main() // in a process NewLocalCluster started: be that scheduler or worker, then exit
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	cluster, err := shoal.NewLocalCluster(ctx, shoal.Workers(2))
	if err != nil {
		return err
	}
	defer cluster.Close()
	c := cluster.Client()

	g := shoal.NewGraph()
	counts := shoal.Map(g, CountWords, docs)       // []shoal.Ref[map[string]int64]
	merged := Merge.Call(g, shoal.Collect(counts)) // shoal.Ref[map[string]int64]
	top := Top.Call(g, merged, shoal.Lit(5))       // shoal.Ref[[]string]

	// the per-document counts as they finish, with progress
	futs, err := shoal.SubmitAll(ctx, c, g, counts)
	if err != nil {
		return err
	}
	err = shoal.Wait(ctx, futs, shoal.Progress(func(done, total int) {
		fmt.Fprintf(os.Stderr, "\rcounted %d/%d documents", done, total)
	}))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	for _, f := range futs {
		m, err := f.Get(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("%s: %d distinct words\n", f.Key(), len(m))
		f.Release()
	}

	words, err := shoal.Get(ctx, c, g, top) // []string, checked at compile time
	if err != nil {
		return err
	}
	fmt.Println("most frequent:", strings.Join(words, " "))
	return nil
}
