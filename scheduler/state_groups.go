package scheduler

// group is a task group (graph.GroupOf): counters kept up to date on every transition, so
// that the dashboard's progress view costs O(groups), not O(tasks).
type group struct {
	name   string
	counts [NumStates]int
	total  int   // tasks not forgotten
	nbytes int64 // bytes in memory (one copy per task)
	dur    float64
	ndur   int
	added  int     // tasks ever added (cumulative, for progress bars)
	done   int     // tasks that ever finished (cumulative)
	size   float64 // moving average of result sizes, bytes
	nsize  int
	deps   []int32 // groups this group depends on
}

// observeSize folds a result size into the moving average.
func (g *group) observeSize(nbytes int64, weight float64) {
	if g.nsize == 0 {
		g.size = float64(nbytes)
	} else {
		g.size = weight*float64(nbytes) + (1-weight)*g.size
	}
	g.nsize++
}

// observe folds a measured duration (seconds) into the moving average.
func (g *group) observe(sec, weight float64) {
	if g.ndur == 0 {
		g.dur = sec
	} else {
		g.dur = weight*sec + (1-weight)*g.dur
	}
	g.ndur++
}

func (c *Core) groupFor(name string) int32 {
	if g, ok := c.groupIdx[name]; ok {
		return g
	}
	g := int32(len(c.groups))
	c.groups = append(c.groups, group{name: name})
	c.groupIdx[name] = g
	return g
}

// addGroupDep notes that group g depends on group d.
func (c *Core) addGroupDep(g, d int32) {
	if g == d {
		return
	}
	deps := c.groups[g].deps
	for _, x := range deps {
		if x == d {
			return
		}
	}
	c.groups[g].deps = append(deps, d)
}

// expected is the expected run time of a task of group g, in seconds.
func (c *Core) expected(g int32) float64 {
	if gr := &c.groups[g]; gr.ndur > 0 {
		return gr.dur
	}
	return c.cfg.UnknownDuration.Seconds()
}
