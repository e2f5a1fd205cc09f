package dnsres

import (
	"container/list"
	"net"
	"sync"
	"sync/atomic"

	"time"

	"github.com/miekg/dns"
)

// entry is one outcome of a resolution: an answer or a temporary error.
// It is shared by every caller and never modified after it is made.
type entry struct {
	ans     Answer
	err     *net.DNSError
	ttl     time.Duration // how long to cache; 0 means not at all
	expires time.Time
	elem    *list.Element
}

// result gives a caller its own copy, named as the caller asked.
func (e *entry) result(name string, now time.Time, cached bool) (*Answer, error) {
	if e.err != nil {
		de := *e.err
		de.Name = name
		return nil, &de
	}
	a := e.ans
	a.RRs = append([]dns.RR(nil), e.ans.RRs...)
	a.Chain = append([]string(nil), e.ans.Chain...)
	a.FromCache = cached
	if cached {
		a.TTL = max(e.expires.Sub(now), 0).Truncate(time.Second)
	}
	return &a, nil
}

// cache maps "name/type" to entries. Eviction is by insertion order, so
// that a hit needs only the read lock; expired entries are dropped when
// met or when their slot is needed.
type cache struct {
	max   int
	mu    sync.RWMutex
	m     map[string]*entry
	order *list.List // of string keys, oldest first
}

func newCache(max int) *cache {
	return &cache{max: max, m: map[string]*entry{}, order: list.New()}
}

func (c *cache) get(key string, now time.Time) (*entry, bool) {
	c.mu.RLock()
	e, ok := c.m[key]
	c.mu.RUnlock()
	if !ok || !now.Before(e.expires) {
		return nil, false
	}
	return e, true
}

func (c *cache) put(key string, e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[key]; ok {
		c.order.Remove(old.elem)
		delete(c.m, key)
	}
	for len(c.m) >= c.max {
		front := c.order.Front()
		if front == nil {
			break
		}
		delete(c.m, c.order.Remove(front).(string))
	}
	e.elem = c.order.PushBack(key)
	c.m[key] = e
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

type counters struct {
	queries, tcp, hits, misses, resolutions atomic.Uint64
	nxdomain, nodata, servfail, refused     atomic.Uint64
	rcode, timeout, network, canceled       atomic.Uint64
	invalid                                 atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Queries:      c.queries.Load(),
		TCPFallbacks: c.tcp.Load(),
		CacheHits:    c.hits.Load(),
		CacheMisses:  c.misses.Load(),
		Resolutions:  c.resolutions.Load(),
		NXDomain:     c.nxdomain.Load(),
		NoData:       c.nodata.Load(),
		ServFail:     c.servfail.Load(),
		Refused:      c.refused.Load(),
		Rcode:        c.rcode.Load(),
		Timeout:      c.timeout.Load(),
		Network:      c.network.Load(),
		Canceled:     c.canceled.Load(),
		Invalid:      c.invalid.Load(),
	}
}
