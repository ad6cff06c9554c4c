package scheduler

import "iter"

// workerTable holds the registered worker connections by id. Ids are given in increasing
// order and never reused, so the table is a slice from the oldest registered id on: a lookup
// is an index (a map of 10,000 workers cost a cache miss or two per lookup, and the driver
// looks a worker up twice per task), iteration goes in id order, and removing a worker while
// iterating is safe. The slice spans the oldest registered worker to the newest; leading
// entries are dropped as their workers leave.
type workerTable struct {
	base WorkerID      // the id of byID[0]
	byID []*workerConn // nil: left
	n    int
}

// get returns the registered worker of that id, or nil.
func (t *workerTable) get(id WorkerID) *workerConn {
	if i := int(id) - int(t.base); i >= 0 && i < len(t.byID) {
		return t.byID[i]
	}
	return nil
}

// add registers w under w.id, which no registered worker has.
func (t *workerTable) add(w *workerConn) {
	if t.n == 0 { // (removing the last worker left byID empty)
		t.base = w.id
	}
	if i := int(w.id) - int(t.base); i < 0 { // an id older than every registered one (not given by registerWorker)
		t.byID = append(make([]*workerConn, -i, -i+len(t.byID)), t.byID...)
		t.base = w.id
	}
	for int(w.id)-int(t.base) >= len(t.byID) {
		t.byID = append(t.byID, nil)
	}
	t.byID[int(w.id)-int(t.base)] = w
	t.n++
}

// remove unregisters the worker of that id, if there is one.
func (t *workerTable) remove(id WorkerID) {
	i := int(id) - int(t.base)
	if i < 0 || i >= len(t.byID) || t.byID[i] == nil {
		return
	}
	t.byID[i] = nil
	t.n--
	k := 0
	for k < len(t.byID) && t.byID[k] == nil {
		k++
	}
	t.byID = t.byID[k:] // an iteration under way keeps the old slice, and sees the nil
	t.base += WorkerID(k)
}

// len is the number of registered workers.
func (t *workerTable) len() int { return t.n }

// all yields the registered workers in id order; one removed meanwhile is not yielded.
func (t *workerTable) all() iter.Seq[*workerConn] {
	return func(yield func(*workerConn) bool) {
		for _, w := range t.byID {
			if w != nil && !yield(w) {
				return
			}
		}
	}
}
