//go:build linux

package wire

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// pollSet is the Poller's edge-triggered epoll set, its descriptor waited on through Go's
// netpoller (so no thread blocks in epoll_wait).
type pollSet struct {
	ep  *os.File
	rc  syscall.RawConn
	evs [256]unix.EpollEvent
}

func newPollSet() (*pollSet, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	ep := os.NewFile(uintptr(fd), "epoll")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		return nil, err
	}
	return &pollSet{ep: ep, rc: rc}, nil
}

func (s *pollSet) close() error { return s.ep.Close() }

// next waits for edges and calls f with each one's id, and whether the peer hung up (or the
// socket failed); an error once the set is closed.
func (s *pollSet) next(f func(id int32, hup bool)) error {
	var n int
	var werr error
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			n, werr = unix.EpollWait(int(fd), s.evs[:], 0)
			if werr != unix.EINTR {
				return n > 0 || werr != nil
			}
		}
	})
	if err != nil {
		return err
	}
	if werr != nil {
		return os.NewSyscallError("epoll_wait", werr)
	}
	for _, ev := range s.evs[:n] {
		f(ev.Fd, ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0)
	}
	return nil
}

// add puts the socket fd in the set under id.
func (s *pollSet) add(fd uintptr, id int32) error {
	var cerr error
	err := s.rc.Control(func(ep uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: id}
		cerr = unix.EpollCtl(int(ep), unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil {
		return err
	}
	if cerr != nil {
		return os.NewSyscallError("epoll_ctl", cerr)
	}
	return nil
}

// del takes the socket fd out of the set.
func (s *pollSet) del(fd uintptr) {
	s.rc.Control(func(ep uintptr) { unix.EpollCtl(int(ep), unix.EPOLL_CTL_DEL, int(fd), nil) })
}
