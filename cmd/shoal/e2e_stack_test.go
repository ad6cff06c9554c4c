package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/graph"
)

// The dashboard's Task view reads a running task's call stack from its worker
// (/api/v1/stack/{key}); a task that is not running has none (404).
func TestE2EDashboardCallStackOfARunningTask(t *testing.T) {
	c := startCluster(t, 1)
	cl := c.connect(t)
	ctx := ctxT(t, time.Minute)
	g := client.NewGraph()
	k := g.Add(graph.Task{Key: "long-sleep", Kind: graph.KindGo, Func: "sleep", Args: []graph.Arg{graph.Lit(3.0)}})
	futs, err := cl.Submit(ctx, g, k)
	require.NoError(t, err)
	stack := func() (int, map[string]any) {
		r, err := http.Get(c.Dashboard + "api/v1/stack/" + url.PathEscape(string(k)))
		require.NoError(t, err)
		defer r.Body.Close()
		var body map[string]any
		require.NoError(t, json.NewDecoder(r.Body).Decode(&body))
		return r.StatusCode, body
	}
	var body map[string]any
	require.Eventually(t, func() bool {
		code, b := stack()
		body = b
		return code == http.StatusOK
	}, 20*time.Second, 50*time.Millisecond, "no call stack while the task runs")
	require.Equal(t, c.Workers[0], body["worker"])
	var text strings.Builder
	for _, l := range body["lines"].([]any) {
		text.WriteString(l.(string) + "\n")
	}
	require.Contains(t, text.String(), "builtinSleep", "the Go task's own frame")
	require.NoError(t, futs[0].Wait(ctx))
	code, b := stack()
	require.Equal(t, http.StatusNotFound, code, "a finished task has no call stack: %v", b)
}
