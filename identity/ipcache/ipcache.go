// Package ipcache maps pod IP addresses, cluster-wide, to the identity of
// the pod holding them. The verifier consults it for callers on other nodes,
// whose connections carry no eBPF socket record.
//
// Reads are lock-free (a sync.Map keyed by netip.Addr); writers serialise on
// a mutex. An address belongs to one owner (a pod key) at a time: when an IP
// is reused, the newest owner wins and a late removal of the previous owner
// does not erase it.
package ipcache

import (
	"net/netip"
	"sync"

	"github.com/portcullis-mesh/portcullis/identity"
)

// Cache is the IP → identity map. The zero value is empty and ready to use.
type Cache struct {
	m sync.Map // netip.Addr → *entry

	mu    sync.Mutex
	owned map[string][]netip.Addr // owner key → addresses it holds
}

type entry struct {
	owner  string
	source identity.Source
}

// Lookup returns the identity of the pod holding addr.
func (c *Cache) Lookup(addr netip.Addr) (identity.Source, bool) {
	v, ok := c.m.Load(addr.Unmap().WithZone(""))
	if !ok {
		return identity.Source{}, false
	}
	return v.(*entry).source, true
}

// Upsert sets the addresses owner holds and the identity they stand for.
// Addresses owner held before and no longer lists are removed.
func (c *Cache) Upsert(owner string, addrs []netip.Addr, src identity.Source) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.owned == nil {
		c.owned = map[string][]netip.Addr{}
	}
	keep := make([]netip.Addr, 0, len(addrs))
	e := &entry{owner: owner, source: src}
	for _, a := range addrs {
		if !a.IsValid() {
			continue
		}
		a = a.Unmap().WithZone("")
		keep = append(keep, a)
		c.m.Store(a, e)
	}
	for _, old := range c.owned[owner] {
		if !contains(keep, old) {
			c.deleteIfOwned(old, owner)
		}
	}
	if len(keep) == 0 {
		delete(c.owned, owner)
		return
	}
	c.owned[owner] = keep
}

// Delete removes the addresses owner holds, leaving any that another owner
// took over since.
func (c *Cache) Delete(owner string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.owned[owner] {
		c.deleteIfOwned(a, owner)
	}
	delete(c.owned, owner)
}

// Len returns the number of addresses in the cache. It walks the whole map:
// for tests and metrics, not the data path.
func (c *Cache) Len() int {
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	return n
}

func (c *Cache) deleteIfOwned(a netip.Addr, owner string) {
	if v, ok := c.m.Load(a); ok && v.(*entry).owner == owner {
		c.m.Delete(a)
	}
}

func contains(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}
