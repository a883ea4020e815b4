package identity

// EnforceLabel is the namespace label that enrols every pod of the
// namespace for capture when its value is EnforceEnabled.
const EnforceLabel = "portcullis.dev/enforce"

// EnforceEnabled is the EnforceLabel value that turns enrolment on.
const EnforceEnabled = "enabled"

// EventType says what happened to a workload on this node.
type EventType uint8

const (
	// EventAdded: a workload started on this node and was located (its
	// NetnsPath and CgroupPath are set unless it is Excluded).
	EventAdded EventType = iota + 1
	// EventUpdated: something about an added workload changed (labels,
	// service account client ID, namespace labels, addresses, or its
	// network namespace after a sandbox restart).
	EventUpdated
	// EventRemoved: the workload is gone, or its sandbox is; Workload is
	// the value last reported.
	EventRemoved
	// EventSynced: every workload that existed when the source started has
	// been reported. A consumer must not garbage-collect state it restored
	// from before a restart until it has seen this event.
	EventSynced
)

func (t EventType) String() string {
	switch t {
	case EventAdded:
		return "added"
	case EventUpdated:
		return "updated"
	case EventRemoved:
		return "removed"
	case EventSynced:
		return "synced"
	default:
		return "unknown"
	}
}

// Exclusion says why a workload is never captured.
type Exclusion uint8

const (
	// NotExcluded: the workload may be captured when a policy selects it
	// or its namespace enforces.
	NotExcluded Exclusion = iota
	// ExcludedHostNetwork: the pod shares the node's network namespace;
	// capturing it would capture the node.
	ExcludedHostNetwork
	// ExcludedSelf: the pod is the agent itself.
	ExcludedSelf
)

func (e Exclusion) String() string {
	switch e {
	case NotExcluded:
		return "none"
	case ExcludedHostNetwork:
		return "host_network"
	case ExcludedSelf:
		return "self"
	default:
		return "unknown"
	}
}

// Event is one change reported by a workload source (the Kubernetes
// informers or a local file). Sources deliver events one at a time, in
// order, from a single goroutine.
type Event struct {
	Type EventType
	// Workload is the workload's current value (the last reported one for
	// EventRemoved); zero for EventSynced. Its maps are the consumer's to
	// keep: sources never share them.
	Workload Workload
	// Exclusion is why the workload must not be captured, if it must not.
	Exclusion Exclusion
	// NamespaceEnforced is true when the workload's namespace carries
	// EnforceLabel=EnforceEnabled: it is captured even without a policy
	// selecting it.
	NamespaceEnforced bool
}

// Handler consumes events. It must return promptly: the source waits for it
// before reporting the next event.
type Handler func(Event)
