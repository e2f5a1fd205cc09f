// Command milter-load drives a milter (or a chain of milters, as Postfix
// runs them) with many concurrent SMTP sessions and reports throughput,
// latency, the actions the milter returned and, with -count-io, the
// packets and socket calls per message.
//
//	milter-load -milter inet:127.0.0.1:8893 -c 16 -m 10 -d 20s
//	milter-load -milter unix:/run/opendkim.sock -milter unix:/run/opendmarc.sock -n 5000
//
// The built-in corpus is DKIM-signed with the test keys (-keys, the
// repository's testdata/keys) and needs the DNS of deploy/bench/zone.json;
// -eml DIR sends the .eml files of DIR instead. Each message is checked
// against the action it must get, so a broken run shows as "unexpected"
// and a non-zero exit status.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	code, err := run(os.Args[1:], os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "milter-load:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// run returns the exit status: 0, 1 for a usage or setup error, 2 when the
// load ran but saw errors or unexpected actions.
func run(args []string, out io.Writer) (int, error) {
	fs := flag.NewFlagSet("milter-load", flag.ContinueOnError)
	var chain multiFlag
	fs.Var(&chain, "milter", "milter socket, inet:HOST:PORT or unix:/path; repeat for a chain (Postfix order)")
	smtpAddr := fs.String("smtp", "", "HOST:PORT of an MTA running the milters (Postfix with XCLIENT allowed for us), instead of -milter")
	conns := fs.Int("c", 8, "concurrent connections")
	perConn := fs.Int("m", 10, "messages per connection")
	count := fs.Int("n", 0, "stop after this many messages (0: use -d)")
	dur := fs.Duration("d", 10*time.Second, "stop after this long (0: use -n)")
	warmup := fs.Int("warmup", 0, "messages sent first and not measured (fills caches)")
	keys := fs.String("keys", "testdata/keys", "DKIM private keys for the built-in corpus")
	emlDir := fs.String("eml", "", "send the .eml files of this directory instead of the built-in corpus")
	clientIP := fs.String("client-ip", "192.0.2.10", "client IP for -eml")
	helo := fs.String("helo", "mx.reject.bench", "HELO for -eml")
	mailFrom := fs.String("mail-from", "", "MAIL FROM for -eml (default: the From address)")
	countIO := fs.Bool("count-io", false, "count packets, socket reads/writes and bytes per message")
	timeout := fs.Duration("timeout", 30*time.Second, "read/write timeout")
	format := fs.String("format", "text", "text, or kv (one line of key=value for scripts)")
	trace := fs.Int("trace", 0, "print the outcome and the header changes of the first N messages (stderr)")
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if fs.NArg() > 0 {
		return 1, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *format != "text" && *format != "kv" {
		return 1, fmt.Errorf("-format %q: want text or kv", *format)
	}
	if len(chain) == 0 && *smtpAddr == "" {
		chain = multiFlag{"inet:127.0.0.1:8893"}
	}
	opts := Options{Conns: *conns, PerConn: *perConn, Count: *count, Duration: *dur, Timeout: *timeout, CountIO: *countIO, TraceN: *trace, SMTP: *smtpAddr}
	if *trace > 0 {
		opts.Trace = os.Stderr
	}
	if opts.Count > 0 && !flagSet(fs, "d") {
		opts.Duration = 0
	}
	for _, c := range chain {
		t, err := ParseTarget(c)
		if err != nil {
			return 1, err
		}
		opts.Chain = append(opts.Chain, t)
	}
	var err error
	if *emlDir != "" {
		opts.Corpus, err = EMLCorpus(*emlDir, *clientIP, *helo, *mailFrom)
	} else {
		opts.Corpus, err = BuiltinCorpus(*keys, time.Now())
	}
	if err != nil {
		return 1, err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *warmup > 0 {
		w := opts
		w.Count, w.Duration, w.CountIO, w.Trace = *warmup, 0, false, nil
		rep, err := Run(ctx, w)
		if err != nil {
			return 1, fmt.Errorf("warmup: %w", err)
		}
		if rep.Errors > 0 {
			return 2, fmt.Errorf("warmup: %d errors, first: %s", rep.Errors, rep.ErrorLog[0])
		}
	}
	rep, err := Run(ctx, opts)
	if err != nil {
		return 1, err
	}
	if *format == "kv" {
		writeKV(out, rep)
	} else {
		writeText(out, &opts, rep)
	}
	if rep.Errors > 0 || len(rep.Unexpected) > 0 || rep.Messages == 0 {
		return 2, nil
	}
	return 0, nil
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func us(d time.Duration) int64 { return d.Microseconds() }

func writeText(w io.Writer, o *Options, r *Report) {
	var names []string
	for _, t := range o.Chain {
		names = append(names, t.String())
	}
	if o.SMTP != "" {
		names = append(names, "smtp:"+o.SMTP)
	}
	fmt.Fprintf(w, "milter-load: %s; %d connections, %d messages per connection\n", strings.Join(names, " -> "), o.Conns, o.PerConn)
	fmt.Fprintf(w, "messages   %d in %.2fs over %d connections: %.1f msg/s\n", r.Messages, r.Elapsed.Seconds(), r.Conns, r.Rate())
	fmt.Fprintf(w, "latency    p50 %v  p90 %v  p99 %v  max %v\n", rnd(r.Percentile(.5)), rnd(r.Percentile(.9)), rnd(r.Percentile(.99)), rnd(r.Percentile(1)))
	fmt.Fprintf(w, "actions    %s\n", actionList(r.Actions))
	if len(r.Unexpected) == 0 {
		fmt.Fprintln(w, "unexpected none")
	} else {
		var keys []string
		for k := range r.Unexpected {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "unexpected %d × %s\n", r.Unexpected[k], k)
		}
	}
	fmt.Fprintf(w, "errors     %d\n", r.Errors)
	for _, e := range r.ErrorLog {
		fmt.Fprintf(w, "  %s\n", e)
	}
	if !o.CountIO || r.Messages == 0 {
		return
	}
	for i, io := range r.IO {
		n := float64(r.Messages)
		fmt.Fprintf(w, "io %s per message: packets %.1f out %.1f in; socket writes %.1f reads %.1f; bytes %.0f out %.0f in\n",
			o.Chain[i], float64(io.PacketsOut)/n, float64(io.PacketsIn)/n, float64(io.Writes)/n, float64(io.Reads)/n,
			float64(io.BytesOut)/n, float64(io.BytesIn)/n)
	}
}

func actionList(m map[string]int64) string {
	var parts []string
	for _, a := range []string{"accept", "quarantine", "reject", "tempfail", "discard"} {
		parts = append(parts, fmt.Sprintf("%s=%d", a, m[a]))
	}
	var other []string
	for a, n := range m {
		switch a {
		case "accept", "quarantine", "reject", "tempfail", "discard":
		default:
			other = append(other, fmt.Sprintf("%s=%d", a, n))
		}
	}
	sort.Strings(other)
	return strings.Join(append(parts, other...), " ")
}

// writeKV prints one line for scripts (deploy/bench/run.sh); the packet
// figures are for the whole chain.
func writeKV(w io.Writer, r *Report) {
	var tot IOSnapshot
	for _, s := range r.IO {
		tot.PacketsIn += s.PacketsIn
		tot.PacketsOut += s.PacketsOut
		tot.Reads += s.Reads
		tot.Writes += s.Writes
	}
	per := func(v int64) float64 {
		if r.Messages == 0 {
			return 0
		}
		return float64(v) / float64(r.Messages)
	}
	unexpected := int64(0)
	for _, n := range r.Unexpected {
		unexpected += n
	}
	fmt.Fprintf(w, "msgs=%d secs=%.3f rate=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d %s unexpected=%d errors=%d pkts_per_msg=%.2f sockops_per_msg=%.2f\n",
		r.Messages, r.Elapsed.Seconds(), r.Rate(), us(r.Percentile(.5)), us(r.Percentile(.9)), us(r.Percentile(.99)), us(r.Percentile(1)),
		actionList(r.Actions), unexpected, r.Errors, per(tot.PacketsIn+tot.PacketsOut), per(tot.Reads+tot.Writes))
}

func rnd(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
