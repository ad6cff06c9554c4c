// Command shoal runs Shoal's processes: a scheduler, a worker, a whole local cluster, and
// tools to look at a running cluster. See package cli.
package main

import "github.com/shoal-dev/shoal/cli"

func main() {
	cli.DemoGraphs = demoGraphs
	cli.Main()
}
