//go:build race

package verifier

import (
	"errors"
	"syscall"
)

// Under the race detector, rawIO goes through syscall.Read and
// syscall.Write: their annotations tell the detector that bytes written to a
// socket by one goroutine and read by another order those goroutines'
// memory accesses. The raw calls of the other build would hide that and
// report races that are not there.

func sysRead(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), b)
	return n, errnoOf(err)
}

func sysWrite(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), b)
	return n, errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if err != nil && !errors.As(err, &e) {
		return syscall.EIO
	}
	return e
}
