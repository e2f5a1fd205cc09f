package milter

import (
	"sync"
	"testing"
)

func TestHistogramBuckets(t *testing.T) {
	h := NewHistogram([]float64{0.5, 0.1, 1}) // unsorted on purpose
	for _, v := range []float64{0.05, 0.1, 0.2, 1, 7} {
		h.Observe(v)
	}
	s := h.Snapshot()
	// le is inclusive: 0.1 falls in the 0.1 bucket, 1 in the 1 bucket.
	want := []uint64{2, 3, 4, 5}
	if len(s.Cumulative) != len(want) {
		t.Fatalf("buckets %v", s.Cumulative)
	}
	for i := range want {
		if s.Cumulative[i] != want[i] {
			t.Errorf("bucket %d (le %v): %d, want %d", i, append(s.Bounds, 0)[i], s.Cumulative[i], want[i])
		}
	}
	if s.Count != 5 || s.Sum < 8.349 || s.Sum > 8.351 {
		t.Errorf("count %d sum %v, want 5 and 8.35", s.Count, s.Sum)
	}
}

func TestHistogramConcurrent(t *testing.T) {
	h := NewHistogram(LatencyBuckets)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				h.Observe(0.25)
			}
		}()
	}
	wg.Wait()
	s := h.Snapshot()
	if s.Count != 8000 || s.Sum != 2000 {
		t.Errorf("count %d sum %v, want 8000 and 2000", s.Count, s.Sum)
	}
}

func TestMetricsReloadsAndDNS(t *testing.T) {
	m := NewMetrics()
	m.Reloaded(true)
	m.Reloaded(false)
	m.Reloaded(true)
	if m.ReloadsOK.Load() != 2 || m.ReloadsFailed.Load() != 1 {
		t.Errorf("reloads ok %d failed %d", m.ReloadsOK.Load(), m.ReloadsFailed.Load())
	}
	m.dnsTime("spf", 3e6)
	m.dnsTime("spf", 40e6)
	got := m.DNSTimes()
	if s := got["spf"]; s.Count != 2 || len(got) != 1 {
		t.Errorf("dns times %+v", got)
	}
}
