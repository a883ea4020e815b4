package bpf

import (
	"fmt"
	"strconv"
)

// Counter names a datapath event counted in the kernel (enum pc_counter in
// lib/common.h, where each value is described).
type Counter uint32

// The counters. String gives the snake_case name used as a metric label.
const (
	CaptureUncaptured       = Counter(portcullisPcCounterPC_CNT_CAPTURE_UNCAPTURED)
	CaptureEstablished      = Counter(portcullisPcCounterPC_CNT_CAPTURE_ESTABLISHED)
	CaptureAssigned         = Counter(portcullisPcCounterPC_CNT_CAPTURE_ASSIGNED)
	CaptureNoListener       = Counter(portcullisPcCounterPC_CNT_CAPTURE_NO_LISTENER)
	CaptureAssignError      = Counter(portcullisPcCounterPC_CNT_CAPTURE_ASSIGN_ERROR)
	CaptureMalformed        = Counter(portcullisPcCounterPC_CNT_CAPTURE_MALFORMED)
	CaptureNotEnrolled      = Counter(portcullisPcCounterPC_CNT_CAPTURE_NOT_ENROLLED)
	CaptureTimeWaitSYN      = Counter(portcullisPcCounterPC_CNT_CAPTURE_TIMEWAIT_SYN)
	SockopsRecorded         = Counter(portcullisPcCounterPC_CNT_SOCKOPS_RECORDED)
	SockopsForgotten        = Counter(portcullisPcCounterPC_CNT_SOCKOPS_FORGOTTEN)
	SockopsUpdateError      = Counter(portcullisPcCounterPC_CNT_SOCKOPS_UPDATE_ERROR)
	SockopsCallbackFlagsErr = Counter(portcullisPcCounterPC_CNT_SOCKOPS_CB_FLAGS_ERROR)
	AccelPaired             = Counter(portcullisPcCounterPC_CNT_ACCEL_PAIRED)
	AccelUpdateError        = Counter(portcullisPcCounterPC_CNT_ACCEL_UPDATE_ERROR)
	AccelTCPOnly            = Counter(portcullisPcCounterPC_CNT_ACCEL_TCP_ONLY)
	CaptureForeignListener  = Counter(portcullisPcCounterPC_CNT_CAPTURE_FOREIGN_LISTENER)
	numCounters             = int(portcullisPcCounterPC_CNT_MAX)
)

// Counters returns every counter in enum order.
func Counters() []Counter {
	out := make([]Counter, numCounters)
	for i := range out {
		out[i] = Counter(i)
	}
	return out
}

// String returns the counter's name, e.g. "capture_no_listener".
func (c Counter) String() string {
	if int(c) < len(counterNames) {
		return counterNames[c]
	}
	return "counter_" + strconv.Itoa(int(c))
}

// counterNames is indexed by Counter; TestCounterNames keeps it in step
// with the C enum.
var counterNames = [...]string{
	CaptureUncaptured:       "capture_uncaptured",
	CaptureEstablished:      "capture_established",
	CaptureAssigned:         "capture_assigned",
	CaptureNoListener:       "capture_no_listener",
	CaptureAssignError:      "capture_assign_error",
	CaptureMalformed:        "capture_malformed",
	CaptureNotEnrolled:      "capture_not_enrolled",
	CaptureTimeWaitSYN:      "capture_timewait_syn",
	SockopsRecorded:         "sockops_recorded",
	SockopsForgotten:        "sockops_forgotten",
	SockopsUpdateError:      "sockops_update_error",
	SockopsCallbackFlagsErr: "sockops_cb_flags_error",
	AccelPaired:             "accel_paired",
	AccelUpdateError:        "accel_update_error",
	AccelTCPOnly:            "accel_tcp_only",
	CaptureForeignListener:  "capture_foreign_listener",
}

// Counters reads every counter, summed over CPUs. Values only grow while
// the maps are pinned (they survive agent restarts).
func (d *Datapath) Counters() (map[Counter]uint64, error) {
	out := make(map[Counter]uint64, numCounters)
	for _, c := range Counters() {
		var perCPU []uint64
		if err := d.objs.PcCounters.Lookup(uint32(c), &perCPU); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", c, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[c] = sum
	}
	return out, nil
}
