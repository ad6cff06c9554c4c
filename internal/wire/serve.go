package wire

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// ServeConfig bounds what one listening port accepts and keeps.
type ServeConfig struct {
	Token  string
	Limits Limits // zero: DefaultLimits
	// MaxConns is, per role served, how many handshaken connections may be open at once;
	// a role not in the map is refused. A connection beyond the cap is refused in the
	// handshake with StatusBusy.
	MaxConns map[Role]int
	// MaxHandshakes bounds connections still in their handshake (unauthenticated): while that
	// many are, the port accepts nothing more and new ones wait in the kernel's backlog.
	// Zero: DefaultMaxHandshakes.
	MaxHandshakes int
	// IdleTimeout drops a connection that sends nothing for this long between messages, per
	// role; a role not in the map (or 0) has none.
	IdleTimeout map[Role]time.Duration
	// MessageTimeout drops a connection that stalls for this long in the middle of a message
	// (slow loris). Zero: DefaultMessageTimeout.
	MessageTimeout time.Duration
	Log            *slog.Logger
	// AcceptFailing, when set, is told when accepting starts failing (with the error) and when
	// it works again (nil): a worker reports itself unhealthy meanwhile.
	AcceptFailing func(err error)
}

// Defaults of ServeConfig.
const (
	DefaultMaxHandshakes  = 128
	DefaultMessageTimeout = 60 * time.Second
)

// Server accepts connections on one port within a ServeConfig.
type Server struct {
	cfg        ServeConfig
	roles      []Role        // the roles served (the keys of cfg.MaxConns)
	handshakes chan struct{} // a slot per connection in its handshake, taken before Accept
	mu         struct {
		sync.Mutex
		open map[Role]int
	}
}

// NewServer checks cfg and fills in its defaults.
func NewServer(cfg ServeConfig) *Server {
	if cfg.Limits.MaxFrames == 0 {
		cfg.Limits = DefaultLimits()
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.MessageTimeout <= 0 {
		cfg.MessageTimeout = DefaultMessageTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, handshakes: make(chan struct{}, cfg.MaxHandshakes)}
	for r := range cfg.MaxConns {
		s.roles = append(s.roles, r)
	}
	s.mu.open = map[Role]int{}
	return s
}

// Open is how many connections of role are open.
func (s *Server) Open(role Role) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.open[role]
}

// Accept keeps accepting on ln until ln is closed (or closed reports true), handing each
// handshaken connection to handle on a goroutine started by spawn (false: stop). The
// connection's slot among MaxConns is given back when handle returns, or, when handle called
// Keep on it, when End is called. Errors such as
// EMFILE do not stop it: it backs off (up to a second) and tries again, and tells
// cfg.AcceptFailing.
func (s *Server) Accept(ln net.Listener, closed func() bool, spawn func(func()) bool, handle func(*Conn)) {
	var backoff time.Duration
	var failing error
	for {
		s.handshakes <- struct{}{} // wait for a handshake slot before taking a connection
		nc, err := ln.Accept()
		if err != nil {
			<-s.handshakes
			if closed() || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if failing == nil {
				s.cfg.Log.Error("cannot accept connections: retrying with backoff", "err", err)
				if s.cfg.AcceptFailing != nil {
					s.cfg.AcceptFailing(err)
				}
			}
			failing = err
			time.Sleep(backoff)
			continue
		}
		if failing != nil {
			s.cfg.Log.Warn("accepting connections again", "after", failing)
			failing, backoff = nil, 0
			if s.cfg.AcceptFailing != nil {
				s.cfg.AcceptFailing(nil)
			}
		}
		if !spawn(func() { s.serve(nc, handle) }) {
			<-s.handshakes
			nc.Close()
			return
		}
	}
}

func (s *Server) serve(nc net.Conn, handle func(*Conn)) {
	c, err := s.handshake(nc)
	<-s.handshakes
	if err != nil {
		var herr *HandshakeError
		if errors.As(err, &herr) {
			s.cfg.Log.Warn("refused connection", "remote", nc.RemoteAddr().String(), "reason", herr.Message)
		} else {
			s.cfg.Log.Debug("handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
		}
		return
	}
	role := c.PeerRole
	c.release = sync.OnceFunc(func() { s.release(role) })
	handle(c)
	if !c.kept.Load() {
		c.release()
	}
}

func (s *Server) handshake(nc net.Conn) (*Conn, error) {
	c, err := acceptAs(nc, s.cfg.Token, s.cfg.Limits, s.roles, s.admit, s.release)
	if err != nil {
		return nil, err
	}
	c.setTimeouts(s.cfg.IdleTimeout[c.PeerRole], s.cfg.MessageTimeout)
	return c, nil
}

// admit takes one of role's connection slots, or says why not.
func (s *Server) admit(role Role) *HandshakeError {
	s.mu.Lock()
	defer s.mu.Unlock()
	if limit := s.cfg.MaxConns[role]; s.mu.open[role] >= limit {
		return &HandshakeError{StatusBusy, fmt.Sprintf("too many %s connections (limit %d): try again later", role, limit)}
	}
	s.mu.open[role]++
	return nil
}

func (s *Server) release(role Role) {
	s.mu.Lock()
	s.mu.open[role]--
	s.mu.Unlock()
}
