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
	// The callbacks are bound once: a closure made per call would be one
	// more allocation per read and per write. A rawIO has at most one
	// Read and one Write in progress (its bufio.Reader and bufio.Writer
	// each have one owner), so each direction has its own fields.
	readFn, writeFn func(fd uintptr) bool
	rb              []byte
	rn              int
	rerr            syscall.Errno
	wb              []byte
	wn              int
	werr            syscall.Errno
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
	r := &rawIO{rc: rc}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

func (r *rawIO) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.rb, r.rn, r.rerr = b, 0, 0
	err := r.rc.Read(r.readFn)
	n, errno := r.rn, r.rerr
	r.rb = nil
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

// read is the RawConn.Read callback: false asks the poller to wait.
func (r *rawIO) read(fd uintptr) bool {
	for {
		m, e := sysRead(fd, r.rb)
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		r.rn, r.rerr = m, e
		return true
	}
}

func (r *rawIO) Write(b []byte) (int, error) {
	r.wb, r.wn, r.werr = b, 0, 0
	err := r.rc.Write(r.writeFn)
	n, errno := r.wn, r.werr
	r.wb = nil
	if err != nil {
		return n, err
	}
	if errno != 0 {
		return n, errno
	}
	return n, nil
}

// write is the RawConn.Write callback: false asks the poller to wait.
func (r *rawIO) write(fd uintptr) bool {
	for r.wn < len(r.wb) {
		m, e := sysWrite(fd, r.wb[r.wn:])
		switch e {
		case 0:
			r.wn += m
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.werr = e
			return true
		}
	}
	return true
}
