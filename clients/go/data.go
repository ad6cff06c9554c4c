package shoal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/arrowio"
	"github.com/shoal-dev/shoal/internal/wire"
)

// dataPool keeps one connection per worker data address; requests on one connection are
// serialised (get_data replies come back in order).
type dataPool struct {
	opts  Options
	mu    sync.Mutex
	conns map[string]*dataConn
}

type dataConn struct {
	mu   sync.Mutex
	conn *wire.Conn
	next uint64
}

func newDataPool(o Options) *dataPool { return &dataPool{opts: o, conns: map[string]*dataConn{}} }

func (p *dataPool) get(ctx context.Context, addr string) (*dataConn, error) {
	p.mu.Lock()
	dc, ok := p.conns[addr]
	if !ok {
		dc = &dataConn{}
		p.conns[addr] = dc
	}
	p.mu.Unlock()
	dc.mu.Lock()
	if dc.conn == nil {
		c, err := wire.Dial(ctx, addr, wire.DialOptions{Role: wire.RoleClient, Token: p.opts.Token, TLS: p.opts.TLS})
		if err != nil {
			dc.mu.Unlock()
			return nil, fmt.Errorf("shoal: connect to worker %s: %w", addr, err)
		}
		dc.conn = c
	}
	return dc, nil // locked
}

func (p *dataPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, dc := range p.conns {
		dc.mu.Lock()
		if dc.conn != nil {
			dc.conn.Close()
		}
		dc.mu.Unlock()
	}
}

// recv reads the answer to a request; when ctx ends first, the connection is dropped (its
// answer would come out of turn) and ctx's error returned. dc is locked.
func (dc *dataConn) recv(ctx context.Context) (*wire.Msg, [][]byte, error) {
	conn := dc.conn
	stop := context.AfterFunc(ctx, func() { conn.Abort() })
	m, frames, err := conn.Recv()
	stop()
	if err != nil {
		conn.Abort()
		dc.conn = nil
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, err
	}
	return m, frames, nil
}

// getData fetches keys from one worker and decodes them. Keys the worker does not hold come
// back in missing; a connection that fails is a transport error (errTransport wraps it), for
// the caller to look elsewhere.
func (p *dataPool) getData(ctx context.Context, addr string, keys []string) (vals map[string]any, missing []string, err error) {
	dc, err := p.get(ctx, addr)
	if err != nil {
		return nil, nil, &transportError{err}
	}
	defer dc.mu.Unlock()
	dc.next++
	if err := dc.conn.Send(&wire.Msg{Op: wire.OpGetData, ID: dc.next, Keys: keys}); err != nil {
		dc.conn.Abort()
		dc.conn = nil
		return nil, nil, &transportError{fmt.Errorf("shoal: get_data to %s: %w", addr, err)}
	}
	m, frames, err := dc.recv(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, err
		}
		return nil, nil, &transportError{fmt.Errorf("shoal: get_data from %s: %w", addr, err)}
	}
	if m.Op == wire.OpError {
		return nil, nil, wire.Errorf(m.Code, m.Message)
	}
	out := make(map[string]any, len(m.Items))
	for _, it := range m.Items {
		if it.NFrames > len(frames) {
			return nil, nil, wire.Errorf(wire.CodeProtocol, "data reply has fewer frames than its items declare")
		}
		v, err := Decode(it.Encoding, frames[:it.NFrames])
		if err != nil {
			return nil, nil, fmt.Errorf("shoal: key %s: %w", it.Key, err)
		}
		out[it.Key] = v
		frames = frames[it.NFrames:]
	}
	return out, m.Missing, nil
}

// transportError is a data connection that failed: the worker may have died, and its keys
// may live elsewhere or be recomputed.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// putData stores values on one worker (put_data) and waits for its put_ok.
func (p *dataPool) putData(ctx context.Context, addr string, items []wire.Item, frames [][]byte) error {
	dc, err := p.get(ctx, addr)
	if err != nil {
		return err
	}
	defer dc.mu.Unlock()
	dc.next++
	if err := dc.conn.Send(&wire.Msg{Op: wire.OpPutData, ID: dc.next, Items: items}, frames...); err != nil {
		dc.conn.Abort()
		dc.conn = nil
		return fmt.Errorf("shoal: put_data to %s: %w", addr, err)
	}
	m, _, err := dc.recv(ctx)
	if err != nil {
		return fmt.Errorf("shoal: put_data to %s: %w", addr, err)
	}
	if m.Op == wire.OpError {
		return wire.Errorf(m.Code, m.Message)
	}
	if m.Op != wire.OpPutOK {
		return wire.Errorf(wire.CodeProtocol, fmt.Sprintf("put_data to %s answered %q", addr, m.Op))
	}
	return nil
}

// Decode turns a stored value's frames into a Go value.
func Decode(encoding string, frames [][]byte) (any, error) {
	switch encoding {
	case wire.EncMsgpack:
		if len(frames) != 1 {
			return nil, fmt.Errorf("msgpack value with %d frames", len(frames))
		}
		return wire.DecodeAny(frames[0])
	case wire.EncArrow:
		if len(frames) != 1 {
			return nil, fmt.Errorf("arrow value with %d frames", len(frames))
		}
		return arrowio.DecodeTable(frames[0])
	case wire.EncBytes:
		if len(frames) != 1 {
			return nil, fmt.Errorf("bytes value with %d frames", len(frames))
		}
		return frames[0], nil
	case wire.EncPickle:
		return nil, fmt.Errorf("the value is a pickled Python object; read it from Python")
	}
	return nil, fmt.Errorf("unknown encoding %q", encoding)
}

// maxKeysPerGet bounds the keys of one get_data request, so that the reply stays within the
// protocol's frame-count limit (4096 frames per message).
const maxKeysPerGet = 1000

// fetch gets the values of finished futures from the workers holding them, one request per
// worker (in batches of maxKeysPerGet). A worker that died or no longer holds a key is not
// the end: the scheduler is asked who else holds it (who_has), and a key nobody holds is
// waited for while it is recomputed (its next key_state names the new holder), with backoff,
// for at most Options.FetchTimeout.
func (c *Client) fetch(ctx context.Context, futs []*Future) ([]any, error) {
	loc := make(map[string]string, len(futs)) // key → where to fetch it next
	for _, f := range futs {
		loc[f.key] = f.Worker()
	}
	byKey := make(map[string]*Future, len(futs))
	for _, f := range futs {
		byKey[f.key] = f
	}
	vals := make(map[string]any, len(futs))
	deadline := time.Now().Add(c.opts.FetchTimeout)
	for attempt := 1; ; attempt++ {
		byWorker := map[string][]string{}
		for k, addr := range loc {
			byWorker[addr] = append(byWorker[addr], k)
		}
		failedOn := map[string]string{}
		var cause error
		for addr, keys := range byWorker {
			for len(keys) > 0 { // a reply carries at least one frame per key, a message at most 4096
				n := min(len(keys), maxKeysPerGet)
				actx, cancel := context.WithDeadline(ctx, deadline) // a dial or a read may hang
				got, missing, err := c.data.getData(actx, addr, keys[:n])
				timedOut := actx.Err() != nil
				cancel()
				var te *transportError
				switch {
				case ctx.Err() != nil:
					return nil, ctx.Err()
				case timedOut && err != nil:
					for _, k := range keys[:n] {
						failedOn[k] = addr
					}
					cause = fmt.Errorf("fetching from %s: %w", addr, err)
				case errors.As(err, &te):
					for _, k := range keys[:n] {
						failedOn[k] = addr
					}
					cause = err
				case err != nil:
					return nil, err
				default:
					for k, v := range got {
						vals[k] = v
						delete(loc, k)
					}
					for _, k := range missing {
						failedOn[k] = addr
					}
					if len(missing) > 0 {
						cause = fmt.Errorf("worker %s no longer holds %v", addr, missing[:min(len(missing), 5)])
					}
				}
				keys = keys[n:]
			}
		}
		if len(failedOn) == 0 {
			break
		}
		if !time.Now().Before(deadline) {
			return nil, wire.Errorf(wire.CodeLost, fmt.Sprintf("could not fetch %d keys within %v: %v",
				len(failedOn), c.opts.FetchTimeout, cause))
		}
		c.log.Debug("fetch failed; looking for the keys elsewhere", "keys", len(failedOn), "cause", cause, "attempt", attempt)
		if err := c.relocate(ctx, byKey, failedOn, loc, attempt); err != nil {
			return nil, err
		}
	}
	out := make([]any, len(futs))
	for i, f := range futs {
		out[i] = vals[f.key]
	}
	return out, nil
}

// relocate finds a new holder for each key that failed on failedOn[key], after a backoff:
// a newer key_state (the key was recomputed or moved), or another replica the scheduler knows
// of. A key with neither keeps its old address and is tried again next round; one whose
// future ended in error fails the fetch.
func (c *Client) relocate(ctx context.Context, byKey map[string]*Future, failedOn, loc map[string]string, attempt int) error {
	t := time.NewTimer(min(time.Duration(attempt)*50*time.Millisecond, 500*time.Millisecond))
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
	}
	var ask []string
	for k, old := range failedOn {
		r := byKey[k].state()
		switch {
		case r.state != "memory":
			return byKey[k].err()
		case r.worker != old:
			loc[k] = r.worker
		default:
			ask = append(ask, k)
		}
	}
	if len(ask) == 0 {
		return nil
	}
	who, err := c.WhoHas(ctx, ask...)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil // the scheduler may be reconnecting: try again next round
	}
	for _, k := range ask {
		for _, addr := range who[k] {
			if addr != "" && addr != failedOn[k] {
				loc[k] = addr
				break
			}
		}
	}
	return nil
}
