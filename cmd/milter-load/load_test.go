package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

var (
	keyDir   = filepath.Join("..", "..", "testdata", "keys")
	zoneFile = filepath.Join("..", "..", "deploy", "bench", "zone.json")
)

// benchDNS serves deploy/bench/zone.json in-process.
func benchDNS(t *testing.T) string {
	t.Helper()
	recs, err := dnstest.LoadFile(zoneFile)
	if err != nil {
		t.Fatal(err)
	}
	z := dnstest.NewZone(dnstest.Options{KeyDir: keyDir})
	if err := z.Add(recs...); err != nil {
		t.Fatal(err)
	}
	srv, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv.Addr()
}

// startServer runs our milter on 127.0.0.1:0 with the given mode.
func startServer(t *testing.T, dnsAddr, authServID, mode string) (Target, *milter.Server) {
	t.Helper()
	res, err := dnsres.New(dnsres.Config{Servers: []string{dnsAddr}, Timeout: time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := milter.DefaultConfig()
	cfg.AuthServID, cfg.Mode, cfg.Quarantine = authServID, mode, "hold"
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := milter.NewServer(cfg, milter.Deps{Resolver: res, Evaluator: policy.NewEvaluator(res, policy.Options{}), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown (a connection left open?): %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return Target{"tcp", ln.Addr().String()}, srv
}

func corpus(t *testing.T) []*Client {
	t.Helper()
	c, err := BuiltinCorpus(keyDir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// decided sums the server's own per-action decision counts.
func decided(srv *milter.Server) map[string]int64 {
	out := map[string]int64{}
	for k, n := range srv.Metrics().Decisions() {
		out[k[2]] += n // {result, disposition, action}
	}
	return out
}

// TestRunAgainstServer runs the built-in corpus against our milter and
// checks the report against what the server itself counted.
func TestRunAgainstServer(t *testing.T) {
	target, srv := startServer(t, benchDNS(t), "bench.mx", "enforce")
	const n = 120
	rep, err := Run(context.Background(), Options{Chain: []Target{target}, Conns: 4, PerConn: 5, Count: n, Corpus: corpus(t), CountIO: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Errors != 0 {
		t.Fatalf("%d errors: %q", rep.Errors, rep.ErrorLog)
	}
	if rep.Messages != n || len(rep.Latencies) != n {
		t.Fatalf("messages = %d (latencies %d), want %d", rep.Messages, len(rep.Latencies), n)
	}
	// Connections share the message budget, so the last ones may end
	// early.
	if rep.Conns < n/5 || rep.Conns > n/5+4 {
		t.Errorf("connections = %d, want %d to %d", rep.Conns, n/5, n/5+4)
	}
	if len(rep.Unexpected) != 0 {
		t.Errorf("unexpected actions: %v", rep.Unexpected)
	}
	// Every outcome of the corpus occurs, and the server counted the
	// same actions the client saw.
	server := decided(srv)
	for _, a := range []string{"accept", "quarantine", "reject"} {
		if rep.Actions[a] == 0 {
			t.Errorf("no %s in %v", a, rep.Actions)
		}
		if rep.Actions[a] != server[a] {
			t.Errorf("%s: client saw %d, server decided %d", a, rep.Actions[a], server[a])
		}
	}
	if got := rep.Actions["accept"] + rep.Actions["quarantine"] + rep.Actions["reject"]; got != n {
		t.Errorf("actions %v do not add up to %d", rep.Actions, n)
	}
	if rep.Percentile(.5) <= 0 || rep.Percentile(.5) > rep.Percentile(.99) || rep.Percentile(.99) > rep.Percentile(1) {
		t.Errorf("percentiles out of order: %v %v %v", rep.Percentile(.5), rep.Percentile(.99), rep.Percentile(1))
	}

	io := rep.IO[0]
	// go-milter's client writes each packet through a fresh 4 KiB
	// bufio.Writer: one write per packet, two for the one body chunk of
	// each message (4 to 8 KiB). The framing parser must agree.
	if io.Writes != io.PacketsOut+n {
		t.Errorf("packets out %d, writes %d, want packets + %d", io.PacketsOut, io.Writes, n)
	}
	// Per message at least MAIL, RCPT, a header, EOH, a body chunk, EOM
	// and ABORT go out, and at least MAIL, RCPT, EOH, body and EOM
	// replies come back (OptNoHeaderReply spares the header ones).
	if io.PacketsOut < 7*n || io.PacketsIn < 5*n {
		t.Errorf("packets out %d in %d for %d messages", io.PacketsOut, io.PacketsIn, n)
	}
	// Each reply is read as a length, then a payload.
	if io.Reads < 2*io.PacketsIn {
		t.Errorf("reads %d < 2 × packets in %d", io.Reads, io.PacketsIn)
	}
	var size int64
	for _, c := range corpus(t) {
		for _, m := range c.Msgs {
			size = max(size, int64(m.Size()))
		}
	}
	if io.BytesOut < n*size/2 || io.BytesOut > n*size*2 {
		t.Errorf("bytes out %d for %d messages of at most %d bytes", io.BytesOut, n, size)
	}
}

// TestRunShowsWrongActions: a milter in monitor mode rejects nothing; the
// report and the exit status must say so instead of looking like a good
// run.
func TestRunShowsWrongActions(t *testing.T) {
	target, _ := startServer(t, benchDNS(t), "bench.mx", "monitor")
	rep, err := Run(context.Background(), Options{Chain: []Target{target}, Conns: 2, PerConn: 4, Count: 32, Corpus: corpus(t)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Actions["accept"] != 32 {
		t.Fatalf("monitor mode acted: %v", rep.Actions)
	}
	var wrong int64
	for k, n := range rep.Unexpected {
		if !strings.Contains(k, "got accept, want reject") && !strings.Contains(k, "got accept, want quarantine") {
			t.Errorf("unexpected entry %q", k)
		}
		wrong += n
	}
	if wrong == 0 {
		t.Errorf("no unexpected action reported: %v", rep.Unexpected)
	}

	var out bytes.Buffer
	code, err := run([]string{"-milter", "inet:" + target.Address, "-keys", keyDir, "-n", "16", "-c", "2", "-format", "kv"}, &out)
	if err != nil || code != 2 {
		t.Errorf("exit %d, %v; want 2 for a run with wrong actions", code, err)
	}
	if !strings.Contains(out.String(), "msgs=16 ") || strings.Contains(out.String(), " unexpected=0 ") {
		t.Errorf("kv output: %s", out.String())
	}
}

func TestCommandLine(t *testing.T) {
	target, _ := startServer(t, benchDNS(t), "bench.mx", "enforce")
	var out bytes.Buffer
	code, err := run([]string{"-milter", "inet:" + target.Address, "-keys", keyDir, "-n", "24", "-c", "3", "-m", "4", "-warmup", "8", "-count-io"}, &out)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v\n%s", code, err, out.String())
	}
	for _, want := range []string{"messages   24 in ", "unexpected none", "errors     0", "per message: packets "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if code, err := run([]string{"-milter", "nowhere"}, io.Discard); code != 1 || err == nil {
		t.Errorf("bad address: exit %d, %v", code, err)
	}
}

// TestRunChain: as with Postfix's smtpd_milters, the second milter sees
// only what the first did not reject, with the first one's header.
func TestRunChain(t *testing.T) {
	dns := benchDNS(t)
	first, srv1 := startServer(t, dns, "first.mx", "enforce")
	second, srv2 := startServer(t, dns, "second.mx", "enforce")
	rep, err := Run(context.Background(), Options{Chain: []Target{first, second}, Conns: 3, PerConn: 4, Count: 48, Corpus: corpus(t), CountIO: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Errors != 0 || len(rep.Unexpected) != 0 || rep.Messages != 48 {
		t.Fatalf("messages %d errors %q unexpected %v", rep.Messages, rep.ErrorLog, rep.Unexpected)
	}
	d1, d2 := decided(srv1), decided(srv2)
	if d1["reject"] != rep.Actions["reject"] || d2["reject"] != 0 {
		t.Errorf("rejects: report %d, first %d, second %d", rep.Actions["reject"], d1["reject"], d2["reject"])
	}
	if got, want := d2["accept"]+d2["quarantine"], rep.Actions["accept"]+rep.Actions["quarantine"]; got != want {
		t.Errorf("second milter decided %d messages, %d passed the first", got, want)
	}
	if rep.IO[1].PacketsOut >= rep.IO[0].PacketsOut {
		t.Errorf("second milter got %d packets, first %d: rejected messages must stop at the first", rep.IO[1].PacketsOut, rep.IO[0].PacketsOut)
	}
}

func TestRunNoMilter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := Run(context.Background(), Options{Chain: []Target{{"tcp", addr}}, Count: 1, Corpus: corpus(t)}); err == nil {
		t.Fatal("no error for a milter that is not there")
	}
}

func TestFrameCounter(t *testing.T) {
	var stream []byte
	for _, size := range []int{1, 5, 300, 70000} {
		stream = binary.BigEndian.AppendUint32(stream, uint32(size))
		stream = append(stream, bytes.Repeat([]byte{'x'}, size)...)
	}
	for _, step := range []int{1, 3, 4, 7, 4096, len(stream)} {
		var f frameCounter
		var n int64
		for p := stream; len(p) > 0; {
			k := min(step, len(p))
			n += f.feed(p[:k])
			p = p[k:]
		}
		if n != 4 || f.left != 0 || f.nhdr != 0 {
			t.Errorf("step %d: %d packets, left %d, nhdr %d", step, n, f.left, f.nhdr)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]Target{
		"inet:127.0.0.1:8893":   {"tcp", "127.0.0.1:8893"},
		"inet:8893@127.0.0.1":   {"tcp", "127.0.0.1:8893"},
		"inet6:[::1]:8893":      {"tcp", "[::1]:8893"},
		"unix:/run/m.sock":      {"unix", "/run/m.sock"},
		"local:/run/m.sock":     {"unix", "/run/m.sock"},
		"127.0.0.1:8893":        {"tcp", "127.0.0.1:8893"},
		"inet:localhost:smtpd2": {"tcp", "localhost:smtpd2"},
	} {
		got, err := ParseTarget(in)
		if err != nil || got != want {
			t.Errorf("ParseTarget(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "unix:", "inet:nohost", "8893", "tcp6x:1.2.3.4"} {
		if got, err := ParseTarget(in); err == nil {
			t.Errorf("ParseTarget(%q) = %v, want an error", in, got)
		}
	}
}

func TestPercentile(t *testing.T) {
	r := &Report{}
	for i := 1; i <= 100; i++ {
		r.Latencies = append(r.Latencies, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{.5: 50, .9: 90, .99: 99, 1: 100, .001: 1} {
		if got := r.Percentile(q); got != want {
			t.Errorf("Percentile(%v) = %v, want %v", q, got, want)
		}
	}
}
