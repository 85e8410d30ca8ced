package main

import (
	"encoding/json"
	"hash/maphash"
	"math"
	"net/http"
	"slices"
	"sync"
)

// stats are the sink's counters. Ids are kept as 64-bit hashes so that millions of them fit
// in a little memory; a collision (about one chance in a million at 5M ids) would undercount
// unique_ids by one.
type stats struct {
	mu          sync.Mutex
	calls       uint64
	singleCalls uint64
	batchCalls  uint64
	records     uint64
	latencyMs   []float64
	seed        maphash.Seed
	ids         map[uint64]struct{}
}

func newStats() *stats {
	return &stats{seed: maphash.MakeSeed(), ids: make(map[uint64]struct{})}
}

// addCall records one answered call: its records' ids and latencies.
func (s *stats) addCall(batch bool, ids []string, latencyMs []float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if batch {
		s.batchCalls++
	} else {
		s.singleCalls++
	}
	s.records += uint64(len(ids))
	s.latencyMs = append(s.latencyMs, latencyMs...)
	for _, id := range ids {
		s.ids[maphash.String(s.seed, id)] = struct{}{}
	}
}

// reset clears the counters and the latency samples; the set of ids seen stays.
func (s *stats) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls, s.singleCalls, s.batchCalls, s.records = 0, 0, 0, 0
	s.latencyMs = nil
}

type latencySummary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

type snapshot struct {
	Calls       uint64         `json:"calls"`
	SingleCalls uint64         `json:"single_calls"`
	BatchCalls  uint64         `json:"batch_calls"`
	Records     uint64         `json:"records"`
	UniqueIDs   int            `json:"unique_ids"`
	LatencyMs   latencySummary `json:"latency_ms"`
}

// quantile is the nearest-rank quantile q of sorted samples.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}

func (s *stats) snapshot() snapshot {
	s.mu.Lock()
	snap := snapshot{
		Calls:       s.calls,
		SingleCalls: s.singleCalls,
		BatchCalls:  s.batchCalls,
		Records:     s.records,
		UniqueIDs:   len(s.ids),
	}
	samples := slices.Clone(s.latencyMs)
	s.mu.Unlock()
	// Sorting millions of samples takes a moment: outside the lock, so calls go on.
	slices.Sort(samples)
	snap.LatencyMs = latencySummary{
		Count: len(samples),
		P50:   quantile(samples, 0.50),
		P90:   quantile(samples, 0.90),
		P99:   quantile(samples, 0.99),
		Max:   quantile(samples, 1.0),
	}
	return snap
}

// handler serves GET /stats and POST /reset.
func (s *stats) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.snapshot())
	})
	mux.HandleFunc("POST /reset", func(w http.ResponseWriter, _ *http.Request) {
		s.reset()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}\n"))
	})
	return mux
}
