package milter

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmarc-milter/dmarc-milter/policy"
)

// Metrics counts what the milter did. It is kept free of any metrics
// library so the package stays usable alone; cmd exports it.
type Metrics struct {
	SessionsOpen  atomic.Int64
	SessionsTotal atomic.Int64
	Panics        atomic.Int64
	// MTAWriteErrors counts replies and header changes that could not be
	// sent to the MTA (it then applies milter_default_action).
	MTAWriteErrors atomic.Int64
	// ReloadsOK and ReloadsFailed count configuration reloads (SIGHUP);
	// the daemon reports them with Reloaded.
	ReloadsOK     atomic.Int64
	ReloadsFailed atomic.Int64

	// Decision is the time the MTA waits at end of message: from the
	// end-of-body callback until the decision (DNS and DKIM still
	// outstanding are waited for here).
	Decision *Histogram
	// Message is the time from MAIL FROM to the decision.
	Message *Histogram

	mu        sync.Mutex
	skips     map[string]int64
	decisions map[[3]string]int64   // {dmarc result, disposition, action}
	dns       map[string]*Histogram // by lookup: spf, dmarc
}

// LatencyBuckets are the upper bounds, in seconds, of the latency
// histograms: from a cached answer to the default message timeout.
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30}

// NewMetrics returns zeroed counters.
func NewMetrics() *Metrics {
	return &Metrics{
		Decision:  NewHistogram(LatencyBuckets),
		Message:   NewHistogram(LatencyBuckets),
		skips:     map[string]int64{},
		decisions: map[[3]string]int64{},
		dns:       map[string]*Histogram{},
	}
}

func (m *Metrics) sessionOpened() { m.SessionsOpen.Add(1); m.SessionsTotal.Add(1) }
func (m *Metrics) sessionClosed() { m.SessionsOpen.Add(-1) }
func (m *Metrics) panic()         { m.Panics.Add(1) }

// Reloaded counts one configuration reload attempt.
func (m *Metrics) Reloaded(ok bool) {
	if ok {
		m.ReloadsOK.Add(1)
	} else {
		m.ReloadsFailed.Add(1)
	}
}

func (m *Metrics) skipped(why string) {
	m.mu.Lock()
	m.skips[why]++
	m.mu.Unlock()
}

func (m *Metrics) decided(d *Decision) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ev := range d.Evals {
		// The disposition beside the action shows what monitor mode
		// and local policy held back: during a rollout, "would reject".
		dis := string(ev.Disposition)
		if ev.Result != policy.ResultFail || dis == "" {
			dis = "none"
		}
		m.decisions[[3]string{string(ev.Result), dis, string(d.Action)}]++
	}
}

// dnsTime records the wall time of one message's SPF check or DMARC
// discovery: the DNS work behind it, cache hits included.
func (m *Metrics) dnsTime(lookup string, d time.Duration) {
	m.mu.Lock()
	h := m.dns[lookup]
	if h == nil {
		h = NewHistogram(LatencyBuckets)
		m.dns[lookup] = h
	}
	m.mu.Unlock()
	h.Observe(d.Seconds())
}

// Decisions returns a copy of the message counts by result, disposition
// and action.
func (m *Metrics) Decisions() map[[3]string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[[3]string]int64, len(m.decisions))
	for k, v := range m.decisions {
		out[k] = v
	}
	return out
}

// Skips returns a copy of the counts of messages not evaluated, by reason.
func (m *Metrics) Skips() map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int64, len(m.skips))
	for k, v := range m.skips {
		out[k] = v
	}
	return out
}

// DNSTimes returns snapshots of the DNS time histograms, by lookup.
func (m *Metrics) DNSTimes() map[string]HistogramSnapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]HistogramSnapshot, len(m.dns))
	for k, h := range m.dns {
		out[k] = h.Snapshot()
	}
	return out
}

// ShuttingDown reports whether Shutdown has been called, for a health
// check that tells a load balancer or monitor to look elsewhere.
func (s *Server) ShuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Histogram is a fixed-bucket histogram safe for concurrent use, lock-free
// on Observe.
type Histogram struct {
	bounds []float64       // ascending upper bounds; +Inf is implicit
	counts []atomic.Uint64 // per bucket, not cumulative; last is +Inf
	sum    atomic.Uint64   // float64 bits
}

// NewHistogram returns a histogram with the given ascending upper bounds.
func NewHistogram(bounds []float64) *Histogram {
	b := append([]float64(nil), bounds...)
	sort.Float64s(b)
	return &Histogram{bounds: b, counts: make([]atomic.Uint64, len(b)+1)}
}

// Observe adds one value.
func (h *Histogram) Observe(v float64) {
	i := sort.SearchFloat64s(h.bounds, v) // first bound >= v: le is inclusive
	h.counts[i].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// HistogramSnapshot is a histogram read at one moment, with cumulative
// counts as Prometheus exposes them.
type HistogramSnapshot struct {
	Bounds     []float64 // upper bounds without +Inf
	Cumulative []uint64  // len(Bounds)+1; the last is the +Inf bucket = Count
	Count      uint64
	Sum        float64
}

// Snapshot reads the histogram. An Observe running concurrently may be
// counted before its value reaches the sum; no count ever decreases.
func (h *Histogram) Snapshot() HistogramSnapshot {
	s := HistogramSnapshot{Bounds: h.bounds, Cumulative: make([]uint64, len(h.counts))}
	var c uint64
	for i := range h.counts {
		c += h.counts[i].Load()
		s.Cumulative[i] = c
	}
	s.Count = c
	s.Sum = math.Float64frombits(h.sum.Load())
	return s
}
