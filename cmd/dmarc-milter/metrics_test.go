package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/milter"
)

// metricsFixture is the daemon's milter server and metrics listener,
// in-process, resolving through the in-process DNS server.
type metricsFixture struct {
	milterAddr string
	url        string
	srv        *milter.Server
	stop       func()
	served     chan error
}

func startMetricsFixture(t *testing.T) *metricsFixture {
	t.Helper()
	st := defaultSettings()
	st.DNS = []string{startDNS(t)}
	st.DNSTimeout = 500 * time.Millisecond
	st.Milter.AuthServID = "lab.test"
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	deps, res, err := buildDeps(st, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	srv, err := milter.NewServer(st.Milter, deps)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &metricsFixture{milterAddr: ln.Addr().String(), srv: srv, served: make(chan error, 1)}
	go func() { f.served <- srv.Serve(ln) }()
	addr, stop, err := listenMetrics("127.0.0.1:0", srv, res, logger)
	if err != nil {
		t.Fatal(err)
	}
	f.url, f.stop = "http://"+addr.String(), stop
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-f.served
		stop()
	})
	return f
}

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// scrape fetches /metrics, checks every line and returns the samples.
func (f *metricsFixture) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	code, body, h := get(t, f.url+"/metrics")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("/metrics: %d %q", code, h.Get("Content-Type"))
	}
	samples, err := parseExposition(body)
	if err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	return samples
}

// TestMetricsScrape drives messages through the milter and checks that
// the counters, histograms and DNS statistics move with them.
func TestMetricsScrape(t *testing.T) {
	f := startMetricsFixture(t)
	before := f.scrape(t)
	for _, k := range []string{"dmarc_milter_sessions_total", "dmarc_milter_dns_queries_total", "dmarc_milter_decision_seconds_count"} {
		if v, ok := before[k]; !ok || v != 0 {
			t.Errorf("before any message: %s = %v (present %t), want 0", k, v, ok)
		}
	}
	if before[`dmarc_milter_build_info{version="`+versionString()+`"}`] != 1 {
		t.Errorf("no build_info")
	}

	act, err := sendSpoof(f.milterAddr, 0)
	if err != nil || act.Code != gomilter.ActReplyCode || act.SMTPCode != 550 {
		t.Fatalf("spoof: %+v %v", act, err)
	}
	one := f.scrape(t)
	want := map[string]float64{
		`dmarc_milter_messages_total{dmarc="fail",disposition="reject",action="reject"}`: 1,
		"dmarc_milter_sessions_total":                                      1,
		"dmarc_milter_decision_seconds_count":                              1,
		`dmarc_milter_decision_seconds_bucket{le="+Inf"}`:                  1,
		"dmarc_milter_message_seconds_count":                               1,
		`dmarc_milter_dns_lookup_seconds_count{lookup="spf"}`:              1,
		`dmarc_milter_dns_lookup_seconds_count{lookup="dmarc"}`:            1,
		`dmarc_milter_dns_lookup_seconds_bucket{lookup="dmarc",le="+Inf"}`: 1,
		"dmarc_milter_panics_total":                                        0,
	}
	for k, v := range want {
		if one[k] != v {
			t.Errorf("after one message: %s = %v, want %v", k, one[k], v)
		}
	}
	if one["dmarc_milter_dns_queries_total"] < 2 || one["dmarc_milter_dns_cache_misses_total"] < 2 {
		t.Errorf("DNS not counted: queries %v misses %v", one["dmarc_milter_dns_queries_total"], one["dmarc_milter_dns_cache_misses_total"])
	}
	if one["dmarc_milter_decision_seconds_sum"] <= 0 || one["dmarc_milter_message_seconds_sum"] < one["dmarc_milter_decision_seconds_sum"] {
		t.Errorf("latency sums: decision %v message %v", one["dmarc_milter_decision_seconds_sum"], one["dmarc_milter_message_seconds_sum"])
	}
	// The session may still be closing on the milter side; it is gone
	// within a moment.
	waitFor(t, func() bool { return f.scrape(t)["dmarc_milter_sessions_in_flight"] == 0 }, "sessions_in_flight back to 0")

	// The same message again: the DNS answers come from the cache.
	if _, err := sendSpoof(f.milterAddr, 0); err != nil {
		t.Fatal(err)
	}
	two := f.scrape(t)
	if two[`dmarc_milter_messages_total{dmarc="fail",disposition="reject",action="reject"}`] != 2 || two["dmarc_milter_sessions_total"] != 2 {
		t.Errorf("second message not counted: %v", two)
	}
	if two["dmarc_milter_dns_cache_hits_total"] <= one["dmarc_milter_dns_cache_hits_total"] || two["dmarc_milter_dns_queries_total"] != one["dmarc_milter_dns_queries_total"] {
		t.Errorf("second message: hits %v -> %v, queries %v -> %v; want more hits, no new query",
			one["dmarc_milter_dns_cache_hits_total"], two["dmarc_milter_dns_cache_hits_total"], one["dmarc_milter_dns_queries_total"], two["dmarc_milter_dns_queries_total"])
	}
	hits, misses := two["dmarc_milter_dns_cache_hits_total"], two["dmarc_milter_dns_cache_misses_total"]
	if r := two["dmarc_milter_dns_cache_hit_ratio"]; r <= 0 || r >= 1 || r != hits/(hits+misses) {
		t.Errorf("hit ratio %v with %v hits, %v misses", r, hits, misses)
	}

	// A trusted client is skipped, by reason.
	c := gomilter.NewClientWithOptions("tcp", f.milterAddr, gomilter.ClientOptions{ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	s, err := c.Session()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Conn("localhost", gomilter.FamilyInet, 25, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	waitFor(t, func() bool { return f.scrape(t)[`dmarc_milter_skipped_total{reason="trusted"}`] == 1 }, "skipped{trusted} = 1")

	f.srv.Metrics().Reloaded(false)
	if got := f.scrape(t)[`dmarc_milter_config_reloads_total{result="failure"}`]; got != 1 {
		t.Errorf("reload failures %v", got)
	}

	code, body, _ := get(t, f.url+"/nothing")
	if code != http.StatusNotFound {
		t.Errorf("/nothing: %d %q", code, body)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHealthz: ok while serving, 503 as soon as the milter is shutting
// down with a session still in flight, and the listener gone after stop.
func TestHealthz(t *testing.T) {
	f := startMetricsFixture(t)
	if code, body, _ := get(t, f.url+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("serving: %d %q", code, body)
	}
	res := make(chan error, 1)
	go func() {
		act, err := sendSpoof(f.milterAddr, 700*time.Millisecond)
		if err == nil && act.SMTPCode != 550 {
			err = fmt.Errorf("answer %+v", act)
		}
		res <- err
	}()
	waitFor(t, func() bool { return f.srv.ActiveSessions() == 1 }, "session in flight")
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- f.srv.Shutdown(ctx)
	}()
	waitFor(t, func() bool { return f.srv.ShuttingDown() }, "shutdown started")
	if code, body, _ := get(t, f.url+"/healthz"); code != http.StatusServiceUnavailable || body != "shutting down\n" {
		t.Errorf("shutting down: %d %q", code, body)
	}
	if f.srv.ActiveSessions() != 1 {
		t.Errorf("session no longer in flight when /healthz was checked: the 503 was not tested during the drain")
	}
	if err := <-res; err != nil {
		t.Errorf("message in flight: %v", err)
	}
	if err := <-shut; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	f.stop()
	f.stop() // a second call is harmless
	if _, err := http.Get(f.url + "/healthz"); err == nil {
		t.Error("metrics listener still answers after stop")
	}
}

func TestStartMetricsBadAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if stop, err := startMetrics(ln.Addr().String(), nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		stop()
		t.Error("listening on a port in use did not fail")
	}
}

var (
	metricNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelNameRE  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// parseExposition checks a text exposition (format 0.0.4) line by line
// and returns its samples keyed by the series as written. It checks what
// a Prometheus scraper relies on: HELP and TYPE once per family, before
// its samples; sample names belonging to the declared family; counters
// named _total; label syntax and escapes; values; no duplicate series;
// histogram buckets cumulative, ending in le="+Inf" equal to _count.
func parseExposition(text string) (map[string]float64, error) {
	if !strings.HasSuffix(text, "\n") {
		return nil, fmt.Errorf("does not end in a line feed")
	}
	samples := map[string]float64{}
	types := map[string]string{}
	helps := map[string]bool{}
	var family, famType string
	buckets := map[string][2]float64{} // series without le: last {le, count}
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		bad := func(format string, args ...any) (map[string]float64, error) {
			return nil, fmt.Errorf("line %d %q: %s", n, line, fmt.Sprintf(format, args...))
		}
		if line == "" {
			return bad("empty line")
		}
		if strings.HasPrefix(line, "#") {
			f := strings.SplitN(line, " ", 4)
			if len(f) < 4 || (f[1] != "HELP" && f[1] != "TYPE") {
				return bad("comment is neither HELP nor TYPE")
			}
			if !metricNameRE.MatchString(f[2]) {
				return bad("bad metric name")
			}
			if f[1] == "HELP" {
				if helps[f[2]] {
					return bad("second HELP")
				}
				helps[f[2]] = true
				for i := 0; i < len(f[3]); i++ {
					if f[3][i] == '\\' {
						i++
						if i == len(f[3]) || (f[3][i] != '\\' && f[3][i] != 'n') {
							return bad("bad escape in HELP")
						}
					}
				}
				continue
			}
			if _, ok := types[f[2]]; ok {
				return bad("second TYPE")
			}
			switch f[3] {
			case "counter":
				if !strings.HasSuffix(f[2], "_total") {
					return bad("counter not named _total")
				}
			case "gauge", "histogram":
			default:
				return bad("unexpected type")
			}
			if !helps[f[2]] {
				return bad("TYPE without HELP")
			}
			types[f[2]] = f[3]
			family, famType = f[2], f[3]
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			return bad("no value")
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return bad("value: %v", err)
		}
		name, lbls, hasLabels := strings.Cut(series, "{")
		if !metricNameRE.MatchString(name) {
			return bad("bad sample name")
		}
		var le string
		if hasLabels {
			if !strings.HasSuffix(lbls, "}") {
				return bad("labels not closed")
			}
			rest := strings.TrimSuffix(lbls, "}")
			seen := map[string]bool{}
			for rest != "" {
				ln, after, ok := strings.Cut(rest, `="`)
				if !ok || !labelNameRE.MatchString(ln) || seen[ln] {
					return bad("bad or repeated label name %q", ln)
				}
				seen[ln] = true
				// The value runs to the first unescaped quote.
				var val strings.Builder
				i := 0
				for ; i < len(after) && after[i] != '"'; i++ {
					if after[i] == '\\' {
						i++
						if i == len(after) || !strings.ContainsRune(`\"n`, rune(after[i])) {
							return bad("bad escape in label value")
						}
					}
					val.WriteByte(after[i])
				}
				if i == len(after) {
					return bad("label value not closed")
				}
				if ln == "le" {
					le = val.String()
				}
				rest = after[i+1:]
				if rest != "" {
					if rest[0] != ',' {
						return bad("no comma between labels")
					}
					rest = rest[1:]
				}
			}
		}
		switch famType {
		case "histogram":
			switch name {
			case family + "_bucket":
				if le == "" {
					return bad("bucket without le")
				}
				b, err := strconv.ParseFloat(le, 64)
				if err != nil {
					return bad("le: %v", err)
				}
				key := strings.Replace(series, `le="`+le+`"`, "", 1)
				if last, ok := buckets[key]; ok && (b <= last[0] || v < last[1]) {
					return bad("bucket bounds do not increase or counts decrease")
				}
				buckets[key] = [2]float64{b, v}
			case family + "_count":
				inf := strings.TrimSuffix(series[len(name):], "}")
				if inf == "" {
					inf = `{le="+Inf"}`
				} else {
					inf += `,le="+Inf"}`
				}
				if got, ok := samples[family+"_bucket"+inf]; !ok || got != v {
					return bad("_count %v differs from the +Inf bucket %v (present %t)", v, got, ok)
				}
			case family + "_sum":
			default:
				return bad("not a sample of histogram %s", family)
			}
		default:
			if name != family {
				return bad("not a sample of %s", family)
			}
		}
		if _, dup := samples[series]; dup {
			return bad("duplicate series")
		}
		samples[series] = v
	}
	return samples, sc.Err()
}

// TestParseExpositionRejects makes sure the checker above fails on the
// mistakes it is meant to catch, so that TestMetricsScrape can fail.
func TestParseExpositionRejects(t *testing.T) {
	head := "# HELP a_total x\n# TYPE a_total counter\n"
	for _, bad := range []string{
		"# TYPE a_total counter\na_total 1\n",                      // TYPE without HELP
		"# HELP a x\n# TYPE a counter\na 1\n",                      // counter without _total
		head + "b_total 1\n",                                       // sample of another family
		head + "a_total{l=\"x} 1\n",                                // unclosed value
		head + "a_total{l=\"a\\tb\"} 1\n",                          // bad escape
		head + "a_total{l=\"a\"} 1\na_total{l=\"a\"} 2\n",          // duplicate
		head + "a_total one\n",                                     // bad value
		head + "a_total 1",                                         // no final LF
		"# HELP a_total x\\t\n# TYPE a_total counter\na_total 1\n", // bad escape in HELP
		"# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // decreasing
		"# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n", // count != +Inf
	} {
		if _, err := parseExposition(bad); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
	good := head + "a_total{l=\"q\\\"\\\\\\n\"} 1\n# HELP h x\n# TYPE h histogram\nh_bucket{k=\"v\",le=\"1\"} 1\nh_bucket{k=\"v\",le=\"+Inf\"} 1\nh_sum{k=\"v\"} 0.5\nh_count{k=\"v\"} 1\n"
	if _, err := parseExposition(good); err != nil {
		t.Errorf("rejected a valid exposition: %v", err)
	}
}

// TestLabelEscaping writes label values and HELP text with every
// character that needs escaping and reads them back through the checker.
func TestLabelEscaping(t *testing.T) {
	var b bytes.Buffer
	e := expo{w: &b}
	e.family("x_total", "counter", "help with \\ and\nnewline")
	val := "a\\b\"c\nd{e}=f,g"
	e.sample("x_total", labels{{"k", val}, {"other", ""}}, 3)
	want := "# HELP x_total help with \\\\ and\\nnewline\n# TYPE x_total counter\nx_total{k=\"a\\\\b\\\"c\\nd{e}=f,g\",other=\"\"} 3\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
	got, err := parseExposition(b.String())
	if err != nil || len(got) != 1 {
		t.Fatalf("%v %v", got, err)
	}
}

// TestDaemonMetrics runs the daemon binary with metrics_listen: the
// listener comes up with serve, counts a message and the SIGHUP reloads
// (one good, one bad file), and goes away when the daemon stops.
func TestDaemonMetrics(t *testing.T) {
	dns := startDNS(t)
	cfgPath := filepath.Join(t.TempDir(), "dmarc-milter.toml")
	murl := "http://" + freePort(t)
	good := fmt.Sprintf("dns = [%q]\nauthserv_id = \"lab.test\"\ndns_timeout = \"500ms\"\nmetrics_listen = %q\n", dns, strings.TrimPrefix(murl, "http://"))
	if err := os.WriteFile(cfgPath, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfgPath)
	f := &metricsFixture{url: murl}
	waitFor(t, func() bool {
		resp, err := http.Get(murl + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	}, "/healthz of the daemon")

	if act, err := sendSpoof(d.addr, 0); err != nil || act.SMTPCode != 550 {
		t.Fatalf("spoof: %+v %v", act, err)
	}
	if got := f.scrape(t)[`dmarc_milter_messages_total{dmarc="fail",disposition="reject",action="reject"}`]; got != 1 {
		t.Errorf("daemon counted %v rejects, want 1", got)
	}

	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.scrape(t)[`dmarc_milter_config_reloads_total{result="success"}`] == 1 }, "one successful reload")
	if err := os.WriteFile(cfgPath, []byte("mode = \"sometimes\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.scrape(t)[`dmarc_milter_config_reloads_total{result="failure"}`] == 1 }, "one failed reload")

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Errorf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not exit after SIGTERM")
	}
	if _, err := http.Get(murl + "/healthz"); err == nil {
		t.Error("metrics listener outlived the daemon")
	}
}
