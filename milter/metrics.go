package milter

import (
	"sync"
	"sync/atomic"
)

// Metrics counts what the milter did. It is kept free of any metrics
// library so the package stays usable alone; cmd exports it.
type Metrics struct {
	SessionsOpen  atomic.Int64
	SessionsTotal atomic.Int64
	Panics        atomic.Int64

	mu        sync.Mutex
	skips     map[string]int64
	decisions map[[2]string]int64 // {dmarc result, action}
}

// NewMetrics returns zeroed counters.
func NewMetrics() *Metrics {
	return &Metrics{skips: map[string]int64{}, decisions: map[[2]string]int64{}}
}

func (m *Metrics) sessionOpened() { m.SessionsOpen.Add(1); m.SessionsTotal.Add(1) }
func (m *Metrics) sessionClosed() { m.SessionsOpen.Add(-1) }
func (m *Metrics) panic()         { m.Panics.Add(1) }

func (m *Metrics) skipped(why string) {
	m.mu.Lock()
	m.skips[why]++
	m.mu.Unlock()
}

func (m *Metrics) decided(d *Decision) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ev := range d.Evals {
		m.decisions[[2]string{string(ev.Result), string(d.Action)}]++
	}
}

// Decisions returns a copy of the per-result, per-action message counts.
func (m *Metrics) Decisions() map[[2]string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[[2]string]int64, len(m.decisions))
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
