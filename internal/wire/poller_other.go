//go:build !linux

package wire

import "errors"

// pollSet has no implementation here: NewPoller fails, and connections are not parked.
type pollSet struct{}

func newPollSet() (*pollSet, error) {
	return nil, errors.New("wire: no poller for idle connections on this system (epoll is Linux's)")
}

func (s *pollSet) close() error                        { return nil }
func (s *pollSet) next(func(id int32, hup bool)) error { return errNotPollable }
func (s *pollSet) add(fd uintptr, id int32) error      { return errNotPollable }
func (s *pollSet) del(fd uintptr)                      {}
