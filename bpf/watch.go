package bpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Resubscription after a lost link subscription (netlink overflow): the
// first retry waits watchRetryMin, each next one twice as long, up to
// watchRetryMax, until the pod is removed.
const (
	watchRetryMin = 100 * time.Millisecond
	watchRetryMax = 10 * time.Second
)

// watchBuffer is the capacity of a watcher's update channel. The netlink
// socket's own buffer absorbs bursts beyond it; if that overflows too, the
// subscription fails and the watcher subscribes and lists the links again.
const watchBuffer = 64

// podWatch is the interface watcher of one enrolled pod: a goroutine that
// receives the link events of the pod's netns (RTM_NEWLINK, RTM_DELLINK)
// and attaches capture to interfaces that appear, detaches it from those
// that go.
type podWatch struct {
	stop chan struct{} // closed to stop the watcher
	done chan struct{} // closed when its goroutine has returned
}

// startWatch starts the watcher of st, which owns ns from then on.
func (d *Datapath) startWatch(st *podState, ns netns.NsHandle) *podWatch {
	w := &podWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go d.watch(st, w, ns)
	return w
}

// stopWatchLocked stops st's watcher; unlockAndWait waits for it to end.
func (d *Datapath) stopWatchLocked(st *podState) {
	if st.watch == nil {
		return
	}
	close(st.watch.stop)
	d.stopped = append(d.stopped, st.watch.done)
	st.watch = nil
}

func (w *podWatch) stopping() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// watch subscribes to the link events of the netns with ListExisting: the
// kernel first lists every link, which closes the race between Enroll's
// listing and the subscription, then reports changes.
func (d *Datapath) watch(st *podState, w *podWatch, ns netns.NsHandle) {
	defer close(w.done)
	defer ns.Close()
	retry := watchRetryMin
	for {
		err := d.watchOnce(st, w, ns)
		if w.stopping() {
			return
		}
		d.report(st, w, fmt.Errorf("watch interfaces: %w", err))
		select {
		case <-w.stop:
			return
		case <-time.After(retry):
		}
		retry = min(2*retry, watchRetryMax)
	}
}

// watchOnce runs one subscription until w is stopped or the subscription
// ends, and returns why it ended.
func (d *Datapath) watchOnce(st *podState, w *podWatch, ns netns.NsHandle) error {
	updates := make(chan netlink.LinkUpdate, watchBuffer)
	// Closing subDone makes the library close its socket, which ends its
	// receiving goroutine, which then closes updates.
	subDone := make(chan struct{})
	subErr := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(updates, subDone, netlink.LinkSubscribeOptions{
		Namespace:    &ns,
		ListExisting: true,
		ErrorCallback: func(err error) {
			select {
			case subErr <- err:
			default: // keep the first
			}
		},
	})
	if err != nil {
		close(subDone)
		return fmt.Errorf("subscribe to link events: %w", err)
	}
	// Until updates is closed the library's goroutine may be blocked
	// sending to it: drain it on every way out.
	defer func() {
		close(subDone)
		for range updates {
		}
	}()
	for {
		select {
		case <-w.stop:
			return nil
		case u, ok := <-updates:
			if !ok {
				select {
				case err := <-subErr:
					return fmt.Errorf("link events: %w", err)
				default:
					return errors.New("link events ended")
				}
			}
			d.linkEvent(st, w, ns, u)
		}
	}
}

// linkEvent attaches capture to a new interface of the pod, or forgets the
// link of an interface that is gone.
func (d *Datapath) linkEvent(st *podState, w *podWatch, ns netns.NsHandle, u netlink.LinkUpdate) {
	a := u.Link.Attrs()
	err := func() error {
		d.mu.Lock()
		defer d.mu.Unlock()
		if w.stopping() {
			return nil // removed, replaced or closed meanwhile
		}
		if u.Header.Type == unix.RTM_DELLINK {
			// The kernel already detached the link (defunct); drop our
			// handle and pin, so that a new interface reusing the
			// ifindex is attached.
			return d.detachLocked(st, a.Index)
		}
		if u.Header.Type != unix.RTM_NEWLINK || isLoopback(a) || !st.wants(a.Name) {
			return nil
		}
		return d.attachLocked(st, ns, podIface{index: a.Index, name: a.Name, kind: captureKindOf(a)})
	}()
	if err != nil {
		d.report(st, w, err)
	}
}

// report records a watcher error in the pod's state and hands it to
// Config.OnError, outside the lock.
func (d *Datapath) report(st *podState, w *podWatch, err error) {
	d.mu.Lock()
	if w.stopping() {
		d.mu.Unlock()
		return
	}
	st.watchErr = err
	d.mu.Unlock()
	if d.cfg.OnError != nil {
		d.cfg.OnError(st.key, err)
	}
}
