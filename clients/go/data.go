package shoal

import (
	"context"
	"fmt"
	"sync"

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

// getData fetches keys from one worker and decodes them.
func (p *dataPool) getData(ctx context.Context, addr string, keys []string) (map[string]any, error) {
	dc, err := p.get(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer dc.mu.Unlock()
	dc.next++
	if err := dc.conn.Send(&wire.Msg{Op: wire.OpGetData, ID: dc.next, Keys: keys}); err != nil {
		dc.conn.Abort()
		dc.conn = nil
		return nil, err
	}
	m, frames, err := dc.recv(ctx)
	if err != nil {
		return nil, fmt.Errorf("shoal: get_data from %s: %w", addr, err)
	}
	if m.Op == wire.OpError {
		return nil, wire.Errorf(m.Code, m.Message)
	}
	if len(m.Missing) > 0 {
		return nil, wire.Errorf(wire.CodeLost, fmt.Sprintf("worker %s no longer holds %v", addr, m.Missing))
	}
	out := make(map[string]any, len(m.Items))
	for _, it := range m.Items {
		if it.NFrames > len(frames) {
			return nil, wire.Errorf(wire.CodeProtocol, "data reply has fewer frames than its items declare")
		}
		v, err := Decode(it.Encoding, frames[:it.NFrames])
		if err != nil {
			return nil, fmt.Errorf("shoal: key %s: %w", it.Key, err)
		}
		out[it.Key] = v
		frames = frames[it.NFrames:]
	}
	return out, nil
}

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

func (c *Client) fetch(ctx context.Context, futs []*Future) ([]any, error) {
	byWorker := map[string][]string{}
	for _, f := range futs {
		addr := f.Worker()
		byWorker[addr] = append(byWorker[addr], f.key)
	}
	vals := map[string]any{}
	for addr, keys := range byWorker {
		// a reply carries at least one frame per key, and a message at most 4096 frames
		for len(keys) > 0 {
			n := min(len(keys), maxKeysPerGet)
			got, err := c.data.getData(ctx, addr, keys[:n])
			if err != nil {
				return nil, err
			}
			for k, v := range got {
				vals[k] = v
			}
			keys = keys[n:]
		}
	}
	out := make([]any, len(futs))
	for i, f := range futs {
		out[i] = vals[f.key]
	}
	return out, nil
}
