package member

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// Roles a member may advertise.
const (
	RoleScheduler = "scheduler"
	RoleWorker    = "worker"
)

// MaxMetaSize is the largest encoded Meta memberlist carries.
const MaxMetaSize = memberlist.MetaMaxSize

// ErrMetaTooLarge is returned, wrapped with the size, when an encoded Meta
// exceeds MaxMetaSize bytes.
var ErrMetaTooLarge = errors.New("member: node metadata too large")

// Meta is what a member tells the cluster about itself.
type Meta struct {
	Role      string             `json:"r"`           // RoleScheduler or RoleWorker
	Name      string             `json:"n,omitempty"` // the scheduler's or worker's name
	Control   string             `json:"c,omitempty"` // scheduler: control address (host:port)
	Data      string             `json:"d,omitempty"` // worker: data address (host:port)
	HTTP      string             `json:"h,omitempty"` // scheduler: dashboard URL
	NThreads  int                `json:"t,omitempty"`
	Resources map[string]float64 `json:"x,omitempty"`
	Version   string             `json:"v,omitempty"`
	// Leaving is set by Member.Leave just before it announces the
	// departure, so that the others report EventLeave rather than
	// EventDead (memberlist does not tell them apart).
	Leaving bool `json:"l,omitempty"`
}

// Encode returns the compact encoding of m carried in node metadata, or an
// error wrapping ErrMetaTooLarge.
func (m Meta) Encode() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("member: encode meta: %w", err)
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, limit %d", ErrMetaTooLarge, len(b), MaxMetaSize)
	}
	return b, nil
}

// DecodeMeta decodes node metadata produced by Meta.Encode.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, nil
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("member: decode meta: %w", err)
	}
	return m, nil
}

// validate checks the role and size of m.
func (m Meta) validate() error {
	if m.Role != RoleScheduler && m.Role != RoleWorker {
		return fmt.Errorf("member: meta role %q must be %q or %q", m.Role, RoleScheduler, RoleWorker)
	}
	_, err := m.Encode()
	return err
}
