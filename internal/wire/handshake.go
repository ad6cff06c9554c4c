package wire

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
)

// Magic opens every Shoal connection.
const Magic = "SHOL"

// Version is the protocol version this build speaks.
const Version uint16 = 1

// Role says what the connecting side is.
type Role uint8

// Roles, as numbered in docs/protocol.md.
const (
	RoleClient   Role = 1
	RoleWorker   Role = 2
	RolePeer     Role = 3
	RoleExecutor Role = 4
	RoleAdmin    Role = 5
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleWorker:
		return "worker"
	case RolePeer:
		return "peer"
	case RoleExecutor:
		return "executor"
	case RoleAdmin:
		return "admin"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Handshake status codes.
const (
	StatusOK          uint8 = 0
	StatusBadMagic    uint8 = 1
	StatusBadVersion  uint8 = 2
	StatusAuthFailed  uint8 = 3
	StatusBadRole     uint8 = 4
	StatusBusy        uint8 = 5 // too many connections of this role: try again later
	maxTokenLen             = 1024
	maxHandshakeMsgLn       = 4096
)

// HandshakeError is a refused handshake, on either side.
type HandshakeError struct {
	Status  uint8
	Message string
}

func (e *HandshakeError) Error() string { return "wire: handshake refused: " + e.Message }

// Code returns the stable error code for the status.
func (e *HandshakeError) Code() string {
	switch e.Status {
	case StatusBadMagic:
		return CodeBadMagic
	case StatusBadVersion:
		return CodeBadVersion
	case StatusAuthFailed:
		return CodeAuthFailed
	case StatusBadRole:
		return CodeBadRole
	case StatusBusy:
		return CodeBusy
	}
	return CodeProtocol
}

// ClientHello is what the connecting side sends.
type ClientHello struct {
	Version uint16
	Role    Role
	Token   string
}

// WriteHello writes the connecting side's half of the handshake.
func WriteHello(w io.Writer, h ClientHello) error {
	if len(h.Token) > maxTokenLen {
		return errors.New("wire: token longer than 1024 bytes")
	}
	b := make([]byte, 0, 9+len(h.Token))
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = append(b, byte(h.Role))
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Token)))
	b = append(b, h.Token...)
	_, err := w.Write(b)
	return err
}

// ReadHello reads the connecting side's half. A bad magic is reported as a HandshakeError
// with StatusBadMagic, before the rest is read.
func ReadHello(r io.Reader) (ClientHello, error) {
	var b [9]byte
	if _, err := io.ReadFull(r, b[:4]); err != nil {
		return ClientHello{}, err
	}
	if string(b[:4]) != Magic {
		return ClientHello{}, &HandshakeError{StatusBadMagic, fmt.Sprintf("bad magic %q: not a Shoal client", b[:4])}
	}
	if _, err := io.ReadFull(r, b[4:9]); err != nil {
		return ClientHello{}, unexpected(err)
	}
	h := ClientHello{Version: binary.BigEndian.Uint16(b[4:6]), Role: Role(b[6])}
	n := binary.BigEndian.Uint16(b[7:9])
	if n > maxTokenLen {
		return h, &HandshakeError{StatusAuthFailed, "token longer than 1024 bytes"}
	}
	tok := make([]byte, n)
	if _, err := io.ReadFull(r, tok); err != nil {
		return h, unexpected(err)
	}
	h.Token = string(tok)
	return h, nil
}

// CheckHello validates a hello against the server's token and the roles it serves.
func CheckHello(h ClientHello, token string, roles ...Role) *HandshakeError {
	if h.Version != Version {
		return &HandshakeError{StatusBadVersion, fmt.Sprintf("protocol version %d not supported (this server speaks %d)", h.Version, Version)}
	}
	if token != "" && subtle.ConstantTimeCompare([]byte(h.Token), []byte(token)) != 1 {
		if h.Token == "" {
			return &HandshakeError{StatusAuthFailed, "authentication failed: this server requires a token"}
		}
		return &HandshakeError{StatusAuthFailed, "authentication failed: wrong token"}
	}
	for _, r := range roles {
		if r == h.Role {
			return nil
		}
	}
	return &HandshakeError{StatusBadRole, fmt.Sprintf("role %s is not served on this port", h.Role)}
}

// WriteAnswer writes the accepting side's half.
func WriteAnswer(w io.Writer, status uint8, msg string) error {
	if len(msg) > maxHandshakeMsgLn {
		msg = msg[:maxHandshakeMsgLn]
	}
	b := make([]byte, 0, 9+len(msg))
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint16(b, Version)
	b = append(b, status)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	_, err := w.Write(b)
	return err
}

// ReadAnswer reads the accepting side's half; a refusal is returned as *HandshakeError.
func ReadAnswer(r io.Reader) error {
	var b [9]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("wire: reading handshake answer: %w", err)
	}
	if string(b[:4]) != Magic {
		return &HandshakeError{StatusBadMagic, "the server did not answer with the Shoal magic: is this a Shoal port?"}
	}
	status := b[6]
	n := binary.BigEndian.Uint16(b[7:9])
	if n > maxHandshakeMsgLn {
		return &HandshakeError{StatusBadMagic, "handshake answer too long"}
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return fmt.Errorf("wire: reading handshake answer: %w", unexpected(err))
	}
	if status != StatusOK {
		return &HandshakeError{status, string(msg)}
	}
	return nil
}

// CheckDialable says why addr (host:port) is not an address another machine or process can
// connect to: a wildcard host such as 0.0.0.0 or [::] is where a server listens, not where it
// can be reached.
func CheckDialable(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("%q has no valid port", addr)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("%q is a wildcard address that peers cannot connect to: advertise an interface's address", addr)
	}
	return nil
}

// ResolveWildcard replaces the wildcard host of addr (0.0.0.0, [::]: where a server listens,
// not where it can be reached) by the IP of from (the address its owner connected from, which
// the receiving side can reach), keeping the port; ok is false when addr has no wildcard host.
func ResolveWildcard(addr string, from net.Addr) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsUnspecified() {
		return addr, false
	}
	fromHost, _, err := net.SplitHostPort(from.String())
	if err != nil {
		return addr, false
	}
	return net.JoinHostPort(fromHost, port), true
}
