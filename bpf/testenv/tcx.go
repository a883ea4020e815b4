package testenv

import (
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// TCXPrograms returns the IDs of the programs attached at TCX ingress of
// PodInterface in the network namespace at netnsPath.
func TCXPrograms(netnsPath string) ([]ebpf.ProgramID, error) {
	var ids []ebpf.ProgramID
	err := podnet.Do(netnsPath, func() error {
		iface, err := net.InterfaceByName(PodInterface)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: iface.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			ids = append(ids, p.ID)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("query TCX programs in %s: %w", netnsPath, err)
	}
	return ids, nil
}
