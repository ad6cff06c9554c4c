package worker

import (
	"fmt"
	"slices"
	"sync"

	"github.com/shoal-dev/shoal/internal/wire"
)

// Preloads are what every Python executor of the worker must have before it runs a task: files
// a client uploaded (client.upload_file) and worker plugins (client.register_plugin). The
// scheduler keeps them and sends each to every worker (preload, with kind "file", "plugin" or
// "remove"); the worker hands them to each of its executors before that executor's next run,
// so a task submitted after upload_file returns finds the module, and an executor started
// later (lazily, or after one died or the worker restarted) gets them all first.

// Preload kinds (the reason field of a preload message).
const (
	PreloadFile   = "file"
	PreloadPlugin = "plugin"
	PreloadRemove = "remove"
)

type preload struct {
	name, kind string
	data       []byte
	gen        uint64
}

type preloads struct {
	mu      sync.Mutex
	items   []preload
	removed map[string]uint64 // name → gen of its removal
	gen     uint64
}

// set records a preload (kind "remove" drops the one named).
func (p *preloads) set(name, kind string, data []byte) error {
	switch kind {
	case PreloadFile, PreloadPlugin, PreloadRemove:
	default:
		return fmt.Errorf("preload %q: unknown kind %q", name, kind)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gen++
	p.items = slices.DeleteFunc(p.items, func(x preload) bool { return x.name == name })
	if kind == PreloadRemove {
		if p.removed == nil {
			p.removed = map[string]uint64{}
		}
		p.removed[name] = p.gen
		return nil
	}
	delete(p.removed, name)
	p.items = append(p.items, preload{name: name, kind: kind, data: data, gen: p.gen})
	return nil
}

// since returns what changed after gen (removals first, then items in order) and the current gen.
func (p *preloads) since(gen uint64) ([]preload, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen == p.gen {
		return nil, gen
	}
	var out []preload
	for name, g := range p.removed {
		if g > gen {
			out = append(out, preload{name: name, kind: PreloadRemove, gen: g})
		}
	}
	slices.SortFunc(out, func(a, b preload) int { return int(a.gen) - int(b.gen) })
	for _, it := range p.items {
		if it.gen > gen {
			out = append(out, it)
		}
	}
	return out, p.gen
}

// handlePreload records a preload the scheduler sent.
func (w *Worker) handlePreload(m *wire.Msg) {
	if err := w.py.preloads.set(m.Name, m.Reason, m.Payload); err != nil {
		w.log.Warn("ignoring a bad preload from the scheduler", "err", err)
		return
	}
	w.log.Info("preload for the Python executors", "name", m.Name, "kind", m.Reason, "bytes", len(m.Payload))
}

// syncPreloads gives ex what changed since it was last given preloads. The executor answers
// each with ok, and with a message when applying it failed (the failure is logged here and kept
// by the executor, where client.upload_file / register_plugin read it back).
func (w *Worker) syncPreloads(ex *executor) error {
	todo, gen := w.py.preloads.since(ex.loaded)
	for _, it := range todo {
		var payload [][]byte
		if len(it.data) > 0 {
			payload = [][]byte{it.data}
		}
		if err := ex.conn.send(&wire.Msg{Op: wire.OpPreload, Name: it.name, Reason: it.kind}, payload...); err != nil {
			return err
		}
		m, _, err := ex.conn.recv()
		if err != nil {
			return err
		}
		if m.Op != wire.OpOK {
			return fmt.Errorf("executor answered preload with %q", m.Op)
		}
		if m.Message != "" {
			w.log.Warn("a preload failed in a Python executor", "pid", ex.pid, "name", it.name, "kind", it.kind, "err", m.Message)
		}
	}
	ex.loaded = gen
	return nil
}
