package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/milter"
)

// The Prometheus text exposition format (version 0.0.4) is written by
// hand: it is a few lines of text, and a client library would be a
// dependency outside the prescribed set.
const expositionType = "text/plain; version=0.0.4; charset=utf-8"

// startMetrics serves /metrics and /healthz on addr until the returned
// stop function is called.
func startMetrics(addr string, srv *milter.Server, res *dnsres.Resolver, logger *slog.Logger) (func(), error) {
	bound, stop, err := listenMetrics(addr, srv, res, logger)
	if err != nil {
		return nil, err
	}
	logger.Info("metrics listener started", "metrics_listen", bound.String())
	return stop, nil
}

// listenMetrics is startMetrics returning the bound address, so that tests
// can listen on port 0.
func listenMetrics(addr string, srv *milter.Server, res *dnsres.Resolver, logger *slog.Logger) (net.Addr, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	var stopping atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		writeMetrics(&b, srv, res)
		w.Header().Set("Content-Type", expositionType)
		_, _ = w.Write(b.Bytes())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		// 503 as soon as the milter stops accepting, while sessions in
		// flight finish: a monitor or balancer sees the stop coming.
		if stopping.Load() || srv.ShuttingDown() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shutting down\n")
			return
		}
		io.WriteString(w, "ok\n")
	})
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics listener stopped", "err", err)
		}
	}()
	stop := func() {
		if stopping.Swap(true) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
		}
		<-done
	}
	return ln.Addr(), stop, nil
}

// writeMetrics writes every metric in the text exposition format. Label
// sets are sorted so that the output is stable from one scrape to the next.
func writeMetrics(w *bytes.Buffer, srv *milter.Server, res *dnsres.Resolver) {
	m := srv.Metrics()
	e := expo{w: w}

	e.family("dmarc_milter_build_info", "gauge", "Always 1; the version label says which build runs.")
	e.sample("dmarc_milter_build_info", labels{{"version", versionString()}}, 1)

	e.family("dmarc_milter_messages_total", "counter", "DMARC evaluations by result, the disposition the policy asked for (after sampling and local policy) and the action taken on the message; monitor mode shows as disposition reject with action accept. A message with several From domains counts once per domain.")
	dec := m.Decisions()
	keys := make([][3]string, 0, len(dec))
	for k := range dec {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		for n := range keys[i] {
			if keys[i][n] != keys[j][n] {
				return keys[i][n] < keys[j][n]
			}
		}
		return false
	})
	for _, k := range keys {
		e.sample("dmarc_milter_messages_total", labels{{"dmarc", k[0]}, {"disposition", k[1]}, {"action", k[2]}}, float64(dec[k]))
	}

	e.family("dmarc_milter_skipped_total", "counter", "Messages or connections not evaluated, by reason.")
	skips := m.Skips()
	for _, k := range sortedKeys(skips) {
		e.sample("dmarc_milter_skipped_total", labels{{"reason", k}}, float64(skips[k]))
	}

	e.family("dmarc_milter_sessions_in_flight", "gauge", "MTA connections open now.")
	e.sample("dmarc_milter_sessions_in_flight", nil, float64(m.SessionsOpen.Load()))
	e.family("dmarc_milter_sessions_total", "counter", "MTA connections accepted.")
	e.sample("dmarc_milter_sessions_total", nil, float64(m.SessionsTotal.Load()))
	e.family("dmarc_milter_panics_total", "counter", "Internal errors (recovered panics) answered with the on_error action.")
	e.sample("dmarc_milter_panics_total", nil, float64(m.Panics.Load()))
	e.family("dmarc_milter_mta_write_errors_total", "counter", "Replies or header changes that could not be sent to the MTA, which then applies milter_default_action.")
	e.sample("dmarc_milter_mta_write_errors_total", nil, float64(m.MTAWriteErrors.Load()))
	e.family("dmarc_milter_config_reloads_total", "counter", "Configuration reloads (SIGHUP) by result; a failed one keeps the running configuration.")
	e.sample("dmarc_milter_config_reloads_total", labels{{"result", "failure"}}, float64(m.ReloadsFailed.Load()))
	e.sample("dmarc_milter_config_reloads_total", labels{{"result", "success"}}, float64(m.ReloadsOK.Load()))

	e.family("dmarc_milter_decision_seconds", "histogram", "Time the MTA waits at end of message for the decision.")
	e.histogram("dmarc_milter_decision_seconds", nil, m.Decision.Snapshot())
	e.family("dmarc_milter_message_seconds", "histogram", "Time from MAIL FROM to the decision, message transfer included.")
	e.histogram("dmarc_milter_message_seconds", nil, m.Message.Snapshot())
	e.family("dmarc_milter_dns_lookup_seconds", "histogram", "Wall time of each message's SPF check and DMARC policy discovery, cache hits included.")
	dt := m.DNSTimes()
	for _, k := range sortedKeys(dt) {
		e.histogram("dmarc_milter_dns_lookup_seconds", labels{{"lookup", k}}, dt[k])
	}

	if res == nil {
		return
	}
	st := res.Stats()
	e.family("dmarc_milter_dns_queries_total", "counter", "DNS exchanges sent to the resolvers, UDP and TCP.")
	e.sample("dmarc_milter_dns_queries_total", nil, float64(st.Queries))
	e.family("dmarc_milter_dns_tcp_fallbacks_total", "counter", "Truncated UDP replies repeated over TCP.")
	e.sample("dmarc_milter_dns_tcp_fallbacks_total", nil, float64(st.TCPFallbacks))
	e.family("dmarc_milter_dns_cache_hits_total", "counter", "DNS lookups answered from the cache.")
	e.sample("dmarc_milter_dns_cache_hits_total", nil, float64(st.CacheHits))
	e.family("dmarc_milter_dns_cache_misses_total", "counter", "DNS lookups not in the cache.")
	e.sample("dmarc_milter_dns_cache_misses_total", nil, float64(st.CacheMisses))
	e.family("dmarc_milter_dns_cache_hit_ratio", "gauge", "Cache hits over hits plus misses since start (0 before the first lookup).")
	ratio := 0.0
	if n := st.CacheHits + st.CacheMisses; n > 0 {
		ratio = float64(st.CacheHits) / float64(n)
	}
	e.sample("dmarc_milter_dns_cache_hit_ratio", nil, ratio)
	e.family("dmarc_milter_dns_cache_entries", "gauge", "Entries in the DNS cache.")
	e.sample("dmarc_milter_dns_cache_entries", nil, float64(st.CacheEntries))
	e.family("dmarc_milter_dns_resolutions_total", "counter", "Upstream resolutions; cache misses beyond this were collapsed into identical queries in flight.")
	e.sample("dmarc_milter_dns_resolutions_total", nil, float64(st.Resolutions))
	e.family("dmarc_milter_dns_outcomes_total", "counter", "Resolutions that did not return data, by outcome (servfail and timeout make dmarc=temperror).")
	for _, o := range []struct {
		name string
		n    uint64
	}{
		{"canceled", st.Canceled},
		{"invalid_name", st.Invalid},
		{"network", st.Network},
		{"nodata", st.NoData},
		{"nxdomain", st.NXDomain},
		{"other_rcode", st.Rcode},
		{"refused", st.Refused},
		{"servfail", st.ServFail},
		{"timeout", st.Timeout},
	} {
		e.sample("dmarc_milter_dns_outcomes_total", labels{{"outcome", o.name}}, float64(o.n))
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

type labels [][2]string

// expo writes exposition lines.
type expo struct{ w *bytes.Buffer }

func (e expo) family(name, typ, help string) {
	fmt.Fprintf(e.w, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
}

func (e expo) sample(name string, ls labels, v float64) {
	e.w.WriteString(name)
	if len(ls) > 0 {
		e.w.WriteByte('{')
		for i, l := range ls {
			if i > 0 {
				e.w.WriteByte(',')
			}
			e.w.WriteString(l[0])
			e.w.WriteString(`="`)
			e.w.WriteString(escapeLabel(l[1]))
			e.w.WriteByte('"')
		}
		e.w.WriteByte('}')
	}
	e.w.WriteByte(' ')
	e.w.WriteString(formatValue(v))
	e.w.WriteByte('\n')
}

// histogram writes the cumulative _bucket series (le last among the
// labels, +Inf included), then _sum and _count.
func (e expo) histogram(name string, ls labels, s milter.HistogramSnapshot) {
	for i, c := range s.Cumulative {
		le := "+Inf"
		if i < len(s.Bounds) {
			le = formatValue(s.Bounds[i])
		}
		e.sample(name+"_bucket", append(append(labels(nil), ls...), [2]string{"le", le}), float64(c))
	}
	e.sample(name+"_sum", ls, s.Sum)
	e.sample(name+"_count", ls, float64(s.Count))
}

// escapeLabel escapes a label value: backslash, double quote and line feed.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// escapeHelp escapes HELP text: backslash and line feed.
func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
