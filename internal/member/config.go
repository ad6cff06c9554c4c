package member

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Config configures a Member. Start from DefaultConfig.
type Config struct {
	// Name is the member's unique name in the cluster. Required.
	Name string
	// BindAddr is the address gossip listens on (default 127.0.0.1).
	BindAddr string
	// BindPort is the gossip port, used for both UDP and TCP; 0 picks a
	// free port (see Member.Addr).
	BindPort int
	// AdvertiseAddr is the IP address other members reach this one at, when
	// it differs from BindAddr (NAT); required when BindAddr is a wildcard
	// (0.0.0.0, ::), which nobody can dial. Empty: BindAddr.
	AdvertiseAddr string
	// Meta is advertised to the other members.
	Meta Meta
	// Seeds are joined by New when non-empty (Join can be called later).
	Seeds []string
	// Token, when set, encrypts and authenticates gossip with a key
	// derived by SHA-256; all members must share it.
	Token string
	// Logger receives memberlist's logs at debug level. Nil: discarded.
	Logger *slog.Logger
	// EventBuffer is the capacity of the Events channel.
	EventBuffer int

	// Failure detection and dissemination timings. The defaults suit a
	// LAN or loopback: a member that stops without leaving is declared
	// dead within about 2-5 seconds.
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	GossipInterval time.Duration
	// SuspicionMult scales how long a suspect member has to refute before
	// it is declared dead (SuspicionMult × ProbeInterval for small
	// clusters, growing with log(cluster size)).
	SuspicionMult int
	// PushPullInterval is the period of full state syncs.
	PushPullInterval time.Duration
	// TCPTimeout bounds joins, push/pull and TCP fallback probes.
	TCPTimeout time.Duration
	// DeadNodeReclaimTime lets a new member take the name of a dead one
	// after this long (a restarted worker).
	DeadNodeReclaimTime time.Duration
}

// DefaultConfig returns the defaults for a LAN or a single machine.
func DefaultConfig() Config {
	return Config{
		BindAddr:            "127.0.0.1",
		EventBuffer:         1024,
		ProbeInterval:       500 * time.Millisecond,
		ProbeTimeout:        250 * time.Millisecond,
		GossipInterval:      100 * time.Millisecond,
		SuspicionMult:       3,
		PushPullInterval:    15 * time.Second,
		TCPTimeout:          2 * time.Second,
		DeadNodeReclaimTime: 5 * time.Second,
	}
}

// Validate reports the first invalid setting, naming its value.
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf("member: "+format, args...))
		}
	}
	check(c.Name != "", "config Name must be set")
	check(c.BindAddr == "" || net.ParseIP(c.BindAddr) != nil, "BindAddr %q is not an IP address", c.BindAddr)
	check(c.AdvertiseAddr == "" || net.ParseIP(c.AdvertiseAddr) != nil, "AdvertiseAddr %q is not an IP address", c.AdvertiseAddr)
	check(c.AdvertiseAddr == "" || !net.ParseIP(c.AdvertiseAddr).IsUnspecified(), "AdvertiseAddr %q is a wildcard, which other members cannot reach", c.AdvertiseAddr)
	check(c.AdvertiseAddr != "" || c.BindAddr == "" || !net.ParseIP(c.BindAddr).IsUnspecified(),
		"BindAddr %q listens on every interface: set AdvertiseAddr to the address other members reach this one at", c.BindAddr)
	check(c.BindPort >= 0 && c.BindPort <= 65535, "BindPort %d out of range [0, 65535]", c.BindPort)
	check(c.EventBuffer > 0, "EventBuffer %d must be positive", c.EventBuffer)
	check(c.ProbeInterval > 0, "ProbeInterval %v must be positive", c.ProbeInterval)
	check(c.ProbeTimeout > 0 && c.ProbeTimeout < c.ProbeInterval, "ProbeTimeout %v must be positive and below ProbeInterval %v", c.ProbeTimeout, c.ProbeInterval)
	check(c.GossipInterval > 0, "GossipInterval %v must be positive", c.GossipInterval)
	check(c.SuspicionMult > 0, "SuspicionMult %d must be positive", c.SuspicionMult)
	check(c.PushPullInterval >= 0, "PushPullInterval %v must not be negative", c.PushPullInterval)
	check(c.TCPTimeout > 0, "TCPTimeout %v must be positive", c.TCPTimeout)
	if err := c.Meta.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
