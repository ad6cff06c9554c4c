package scheduler

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/graph"
	"github.com/shoal-dev/shoal/internal/wire"
)

// The journal: an append-only log of what the scheduler was asked to do, so that a scheduler
// started again on the same directory (after a crash, kill -9 or an upgrade) knows the work
// again. What is journaled is what cannot be learned from anyone else:
//
//   - client graphs (with the Python functions they use), wanted, released, cancelled and
//     fire-and-forget keys, clients that left, and cluster restarts;
//   - shared state that stores values: Variables, Queues, Events, published datasets;
//   - the names of the registered workers, so that a restarted scheduler knows whom to wait
//     for before it places work.
//
// Results are not journaled: they live on the workers, which outlive the scheduler and
// register again with what they hold. Replay rebuilds the graph; the returning workers'
// results complete it; only what no worker kept is computed again (lineage).
//
// The file is a magic line followed by records: length (4 bytes, little-endian), CRC-32C of
// the body (4 bytes), body (a message header in the wire encoding: op plus fields). A torn or
// corrupt tail — the process died in the middle of a write — ends the replay there and is cut
// off. Records are written (write(2)) at the end of every driver pass, before the pass's
// messages are flushed to the network, so anything a client was told is in the file when the
// process dies; fsync runs once a second, so a machine crash loses at most about a second.
// When the file has grown well past its last compaction, the live state is written as a
// snapshot to a new file that replaces it.

const (
	journalMagic = "SHOAL-JOURNAL 1\n"
	journalFile  = "journal.log"
	// maxJournalRecord bounds one record; a longer length in the file is corruption.
	maxJournalRecord = 1 << 30
	// compactAfter: a journal this much larger than its last snapshot is compacted.
	compactAfter = 64 << 20
	// Journal-only ops (never on the network).
	jopWorkerJoined = "j.worker_joined"
	jopWorkerLeft   = "j.worker_left"
	jopClientLeft   = "j.client_left"
	jopRestart      = "j.restart"
	jopSnapshot     = "j.snapshot"  // the end of a compaction's snapshot
	jopGraphSeq     = "j.graph_seq" // a client's last update_graph id (Server.graphSeq), in a snapshot
)

// replayClient is the pseudo-client that wants a snapshot's tasks while it is replayed.
const replayClient ClientID = 1<<31 - 3

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// journal is the open journal file. Owned by the driver goroutine, except the fsync.
type journal struct {
	dir, path string
	f         *os.File
	buf       []byte // records of this pass, written at flush
	size      int64  // bytes in the file
	base      int64  // its size right after the last compaction
	funcs     map[string]bool
	dirty     bool // written since the last fsync
	syncing   sync.Mutex
	failed    error // the first write error: journaling stopped
	closed    bool
	// compacting: a snapshot is being written; carry holds the records written since it was
	// collected, appended to it before it replaces the file
	compacting bool
	carry      []byte
	bg         sync.WaitGroup // the compaction's writer
	log        func(msg string, args ...any)
}

// appendRecord encodes m as one record into buf.
func appendRecord(buf []byte, m *wire.Msg) ([]byte, error) {
	body, err := wire.EncodeHeader(m)
	if err != nil {
		return buf, err
	}
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(body)))
	buf = binary.LittleEndian.AppendUint32(buf, crc32.Checksum(body, crcTable))
	return append(buf, body...), nil
}

// readJournal reads the records of path. A torn or corrupt tail stops the read: valid is the
// length of the good prefix (the file is cut there before appending).
func readJournal(path string, each func(m *wire.Msg) error) (valid int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	r := bufio.NewReaderSize(f, 1<<20)
	magic := make([]byte, len(journalMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != journalMagic {
		return 0, fmt.Errorf("%s is not a Shoal journal (bad magic)", path)
	}
	pos := int64(len(journalMagic))
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return pos, nil // the end, or a torn header
		}
		n := int64(binary.LittleEndian.Uint32(hdr[:4]))
		if n > maxJournalRecord || pos+8+n > st.Size() {
			return pos, nil // a length the file does not hold: a torn write
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return pos, nil
		}
		if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(hdr[4:]) {
			return pos, nil
		}
		m, err := wire.DecodeHeader(body)
		if err != nil {
			return pos, nil
		}
		if err := each(m); err != nil {
			return pos, err
		}
		pos += 8 + n
	}
}

// openJournal replays the journal in cfg.Journal (creating it when absent) into the core, and
// opens it for appending. Called by NewServer, before anything is served.
func (s *Server) openJournal() error {
	dir := s.cfg.Journal
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("scheduler: journal: %w", err)
	}
	j := &journal{dir: dir, path: filepath.Join(dir, journalFile), funcs: map[string]bool{},
		log: func(msg string, args ...any) { s.log.Error(msg, args...) }}
	valid := int64(0)
	if _, err := os.Stat(j.path); err == nil {
		rp := newReplay(s)
		v, err := readJournal(j.path, rp.apply)
		if err != nil {
			return fmt.Errorf("scheduler: journal %s: %w", j.path, err)
		}
		valid = v
		rp.finish()
		for h := range s.funcs {
			j.funcs[h] = true
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("scheduler: journal: %w", err)
	}
	f, err := os.OpenFile(j.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("scheduler: journal: %w", err)
	}
	if valid == 0 { // a new journal
		err = f.Truncate(0)
		if err == nil {
			_, err = f.WriteAt([]byte(journalMagic), 0)
		}
		valid = int64(len(journalMagic))
	} else {
		err = f.Truncate(valid) // cut a torn tail off
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("scheduler: journal: %w", err)
	}
	if _, err := f.Seek(valid, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("scheduler: journal: %w", err)
	}
	j.f, j.size, j.base = f, valid, valid
	s.journal = j
	return nil
}

// journalMsg appends m (its client field set by the caller) to this pass's records.
func (s *Server) journalMsg(m *wire.Msg) {
	j := s.journal
	if j == nil || j.failed != nil {
		return
	}
	var err error
	if j.buf, err = appendRecord(j.buf, m); err != nil {
		s.journalFailed(fmt.Errorf("encoding a %s record: %w", m.Op, err))
	}
}

// journalFailed stops journaling after an error, loudly: the scheduler goes on serving, but a
// restart would not resume what came after.
func (s *Server) journalFailed(err error) {
	if s.journal.failed == nil {
		s.journal.failed = err
		s.log.Error("the journal failed: work from now on is not journaled, and a restarted scheduler will not resume it",
			"dir", s.journal.dir, "err", err)
	}
}

// journalClient journals a client's request that changes what the scheduler must remember.
func (s *Server) journalClient(cl *clientConn, m *wire.Msg) {
	if s.journal == nil {
		return
	}
	switch m.Op {
	case wire.OpUpdateGraph:
		j := s.journal
		rec := wire.Msg{Op: m.Op, ID: m.ID, Client: int64(cl.id), Tasks: m.Tasks, Wanted: m.Wanted}
		for _, t := range m.Tasks { // the functions its tasks use, once each
			if h := t.Func; h != "" && !j.funcs[h] {
				if b, ok := s.funcs[h]; ok {
					if rec.Funcs == nil {
						rec.Funcs = map[string][]byte{}
					}
					rec.Funcs[h] = b
					j.funcs[h] = true
				}
			}
		}
		s.journalMsg(&rec)
	case wire.OpWanted, wire.OpFireAndForget, wire.OpReleaseKeys, wire.OpCancelKeys:
		s.journalMsg(&wire.Msg{Op: m.Op, Client: int64(cl.id), Keys: m.Keys})
	case wire.OpVariableSet, wire.OpVariableDelete, wire.OpQueuePut, wire.OpQueueGet, wire.OpEventSet,
		wire.OpEventClear, wire.OpPublish, wire.OpUnpublish:
		rec := *m
		rec.Client, rec.Start = int64(cl.id), s.cfg.Clock().UnixNano()
		s.journalMsg(&rec)
	}
}

func (s *Server) journalWorker(name string, joined bool) {
	op := jopWorkerLeft
	if joined {
		op = jopWorkerJoined
	}
	s.journalMsg(&wire.Msg{Op: op, Name: name})
}

func (s *Server) journalClientLeft(id ClientID) {
	s.journalMsg(&wire.Msg{Op: jopClientLeft, Client: int64(id), Start: s.cfg.Clock().UnixNano()})
}

// journalWrite writes this pass's records (before the pass's messages reach the network).
func (s *Server) journalWrite() {
	j := s.journal
	if j == nil || len(j.buf) == 0 {
		return
	}
	if j.failed == nil {
		n, err := j.f.Write(j.buf)
		j.size += int64(n)
		if j.compacting {
			j.carry = append(j.carry, j.buf...)
		}
		if err != nil {
			s.journalFailed(fmt.Errorf("writing %s: %w", j.path, err))
		}
		j.dirty = true
	}
	if cap(j.buf) > 4<<20 {
		j.buf = nil // a big graph's records are not kept for every later pass
	} else {
		j.buf = j.buf[:0]
	}
}

// journalTick syncs the file about once a second (off the driver) and compacts it when it
// has grown far past its last snapshot.
func (s *Server) journalTick(time.Time) {
	j := s.journal
	if j.failed != nil {
		return
	}
	if j.dirty && j.syncing.TryLock() {
		j.dirty = false
		f := j.f
		go func() {
			defer j.syncing.Unlock()
			if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
				j.log("syncing the journal failed: a machine crash could lose recent work", "path", j.path, "err", err)
			}
		}()
	}
	if grown := j.size - j.base; !j.compacting && grown > compactAfter && grown > 3*j.base {
		s.compactJournal()
	}
}

// compactJournal replaces the journal by a snapshot of what the scheduler knows now: every
// task not forgotten (in dependency order), the functions they use, every want, and shared
// state. The driver only collects the snapshot (task definitions are immutable and shared);
// a goroutine encodes it into a new file and syncs it, while records keep going to the old
// file and to a carry-over buffer; back on the driver (finishCompaction) the carry-over is
// appended to the new file, which is renamed over the old one.
func (s *Server) compactJournal() {
	j := s.journal
	if j.compacting {
		return
	}
	t0 := time.Now()
	graphRec := &wire.Msg{Op: wire.OpUpdateGraph, Funcs: map[string][]byte{}, Client: int64(replayClient)}
	wants := map[ClientID][]string{}
	s.core.Snapshot(func(def *graph.Task) {
		graphRec.Tasks = append(graphRec.Tasks, *def)
		if b, ok := s.funcs[def.Func]; ok {
			graphRec.Funcs[def.Func] = b
		}
	}, func(cl ClientID, key string) {
		if cl != holderClient { // shared state's own holds come back with its values
			wants[cl] = append(wants[cl], key)
		}
	})
	// Replayed, the snapshot's graph is wanted by replayClient until the snapshot ends, so
	// nothing in it is released before the wants and shared values that keep it arrive.
	recs := []*wire.Msg{graphRec}
	for cl, keys := range wants {
		graphRec.Wanted = append(graphRec.Wanted, keys...)
		op := wire.OpWanted
		if cl == fireClient {
			op = wire.OpFireAndForget
		}
		recs = append(recs, &wire.Msg{Op: op, Client: int64(cl), Keys: keys})
	}
	now := s.cfg.Clock().UnixNano()
	if s.shared.st != nil {
		for _, m := range s.shared.st.snapshot() {
			m.Start = now
			recs = append(recs, m)
		}
	}
	for w := range s.workers.all() {
		recs = append(recs, &wire.Msg{Op: jopWorkerJoined, Name: w.info.Name})
	}
	for cl, seq := range s.graphSeq {
		recs = append(recs, &wire.Msg{Op: jopGraphSeq, Client: int64(cl), ID: seq})
	}
	recs = append(recs, &wire.Msg{Op: jopSnapshot, Start: now})
	j.compacting, j.carry = true, []byte{}
	collected := time.Since(t0)
	tmp := j.path + ".new"
	j.bg.Add(1)
	go func() {
		defer j.bg.Done()
		buf := []byte(journalMagic)
		var err error
		for _, m := range recs {
			if buf, err = appendRecord(buf, m); err != nil {
				break
			}
		}
		if err == nil {
			err = writeSynced(tmp, buf)
		}
		size := int64(len(buf))
		s.Query(func(*Core) { s.finishCompaction(tmp, size, err, len(graphRec.Tasks), collected, t0) })
	}()
}

// finishCompaction (driver) puts the written snapshot in place, with the records journaled
// since it was collected.
func (s *Server) finishCompaction(tmp string, size int64, err error, tasks int, collected time.Duration, t0 time.Time) {
	j := s.journal
	carry := j.carry
	j.compacting, j.carry = false, nil
	if j.closed || j.failed != nil {
		os.Remove(tmp)
		return
	}
	var f *os.File
	if err == nil {
		if f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
			_, err = f.Write(carry)
			if err == nil {
				err = os.Rename(tmp, j.path)
			}
			if err != nil {
				f.Close()
			}
		}
	}
	if err != nil {
		os.Remove(tmp)
		s.log.Error("compacting the journal failed: it keeps growing", "path", j.path, "err", err)
		j.base = j.size // try again after as much growth again
		return
	}
	j.syncing.Lock() // no fsync of the old file races its close
	j.f.Close()
	j.f, j.size, j.base, j.dirty = f, size+int64(len(carry)), size, len(carry) > 0
	j.syncing.Unlock()
	s.log.Info("journal compacted", "tasks", tasks, "bytes", j.size, "driver_pause", collected.Round(time.Microsecond),
		"took", time.Since(t0).Round(time.Millisecond))
}

// writeSynced writes b to path and syncs it.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// closeJournal writes what is pending and closes the file.
func (s *Server) closeJournal() {
	j := s.journal
	if j == nil || j.closed {
		return
	}
	s.journalWrite()
	j.closed = true
	j.bg.Wait() // a compaction's writer (its finish cannot run any more: the driver is done)
	if j.compacting {
		os.Remove(j.path + ".new")
	}
	j.syncing.Lock()
	defer j.syncing.Unlock()
	if j.failed == nil {
		j.f.Sync()
	}
	j.f.Close()
}
