package verifier

import (
	"io"
	"net"
	"syscall"
)

// rawIO reads and writes a socket with raw read(2)/write(2) calls made
// inside syscall.RawConn's callbacks: the runtime's poller still parks the
// goroutine on EAGAIN and still applies the connection's deadlines, but the
// calls skip the runtime's entersyscall/exitsyscall.
//
// That matters at low load. When every P of the process is idle, the
// runtime's sysmon thread sleeps on a futex, and the next entersyscall wakes
// it; it then polls every 20 µs until the process is idle again. A proxy
// that serves one request at a time went idle between requests and woke
// sysmon on each one: a futex wake and two context switches per request on
// the CPU it shares with the application. read(2) and write(2) on a
// non-blocking socket do not block, so nothing needs the P handed off while
// they run.
//
// Under the race detector the calls are syscall.Read and syscall.Write
// (rawio_race.go), whose annotations the detector needs.
//
// Bodies moved with splice(2) (io.Copy between the *net.TCPConn values)
// do not go through rawIO.
type rawIO struct {
	rc syscall.RawConn
}

// newRawIO returns an io.ReadWriter over c's socket, or c itself when c is
// not a socket (tests use net.Pipe; TLS or wrapped connections).
func newRawIO(c net.Conn) io.ReadWriter {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawIO{rc: rc}
}

func (r *rawIO) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			m, e := sysRead(fd, b)
			if e == syscall.EINTR {
				continue
			}
			if e == syscall.EAGAIN {
				return false
			}
			n, errno = m, e
			return true
		}
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (r *rawIO) Write(b []byte) (int, error) {
	var n int
	var errno syscall.Errno
	err := r.rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := sysWrite(fd, b[n:])
			switch e {
			case 0:
				n += m
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err != nil {
		return n, err
	}
	if errno != 0 {
		return n, errno
	}
	return n, nil
}
