package enforcer

import (
	"errors"
	"net"
	"sync"
)

// acceptor owns a pod's listener. One loop accepts and hands each
// connection to whichever verifier asks first through its view, so that a
// verifier can be replaced (a new one served on a new view, the old view
// closed) while the listener stays open: closing it would reset the
// connections in its backlog, and opening another on the same port in the
// meantime is not possible.
type acceptor struct {
	ln      net.Listener
	out     chan accepted
	closing chan struct{} // closed by Close
	done    chan struct{} // closed when the loop has ended
	once    sync.Once
}

// accepted is one result of the listener's Accept.
type accepted struct {
	c   net.Conn
	err error
}

func newAcceptor(ln net.Listener) *acceptor {
	a := &acceptor{ln: ln, out: make(chan accepted), closing: make(chan struct{}), done: make(chan struct{})}
	go a.loop()
	return a
}

func (a *acceptor) loop() {
	defer close(a.done)
	for {
		c, err := a.ln.Accept()
		select {
		case a.out <- accepted{c, err}:
		case <-a.closing:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil && !retryable(err) {
			return // the view that got err stops its verifier
		}
	}
}

// retryable reports whether the verifier retries after err (it backs off
// on timeouts and temporary errors such as EMFILE, as net/http does).
func retryable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Close closes the listener: connections not handed out yet are reset.
// Views then fail with net.ErrClosed.
func (a *acceptor) Close() error {
	var err error
	a.once.Do(func() {
		close(a.closing)
		err = a.ln.Close()
	})
	return err
}

// view returns a new listener for one verifier. Closing it leaves the
// acceptor open.
func (a *acceptor) view() *view {
	return &view{a: a, closed: make(chan struct{})}
}

// view is a verifier's listener on an acceptor.
type view struct {
	a      *acceptor
	closed chan struct{}
	once   sync.Once
}

// Accept returns the next connection of the acceptor. A connection may
// still be returned right after Close; the caller serves it as usual.
func (v *view) Accept() (net.Conn, error) {
	select {
	case <-v.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case r := <-v.a.out:
		return r.c, r.err
	case <-v.closed:
		return nil, net.ErrClosed
	case <-v.a.done:
		return nil, net.ErrClosed
	}
}

// Close makes the view's pending and later Accept calls fail with
// net.ErrClosed.
func (v *view) Close() error {
	v.once.Do(func() { close(v.closed) })
	return nil
}

func (v *view) Addr() net.Addr { return v.a.ln.Addr() }
