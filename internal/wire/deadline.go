package wire

import (
	"net"
	"time"
)

// lazyDeadline keeps one direction's deadline on a connection, moving it only when it must.
// Moving a deadline updates a runtime timer (with 10,000 worker connections, every message's
// read and write did, about 0.1 µs of the scheduler's CPU per task), so an operation that wants
// its span from now keeps the deadline already set when that falls less than a quarter of the
// span short of now+span. Such a deadline can fire early: the operation then sees that less
// than its span has passed, sets the deadline it is owed, and goes on (expired).
//
// Other code may set the connection's deadline behind its back: Close an earlier one, which
// fires early like a kept one (and is retried past: Close closes the socket after its second
// anyway); stallWriter and sendfile's chunks one at most a span after their own writes, which
// is never later than a later operation is owed. So an operation's deadline may come early,
// and is then put right, but never late. (A connection whose timed-out writes cannot be
// retried, TLS, must not keep its write deadline lazily: Conn.writeStalling does not.)
type lazyDeadline struct {
	at    time.Time // what was last set through this; zero: none
	write bool      // the write deadline, else the read deadline
}

func (d *lazyDeadline) set(nc net.Conn, t time.Time) {
	if d.write {
		nc.SetWriteDeadline(t)
	} else {
		nc.SetReadDeadline(t)
	}
	d.at = t
}

// arm makes sure a deadline is set within a quarter of span before now+span, and returns
// the start of the operation it is for. span <= 0 clears the deadline.
func (d *lazyDeadline) arm(nc net.Conn, span time.Duration) time.Time {
	now := time.Now()
	if span <= 0 {
		if !d.at.IsZero() {
			d.set(nc, time.Time{})
		}
		return now
	}
	want := now.Add(span)
	if d.at.IsZero() || d.at.After(want) || d.at.Before(want.Add(-span/4)) {
		d.set(nc, want)
	}
	return now
}

// expired tells, after the operation begun at start timed out, whether its whole span has
// passed. If not (an early deadline kept by arm), it sets start+span and the caller retries.
func (d *lazyDeadline) expired(nc net.Conn, start time.Time, span time.Duration) bool {
	if span <= 0 || time.Since(start) >= span {
		return true
	}
	d.set(nc, start.Add(span))
	return false
}
