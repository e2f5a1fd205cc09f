package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/auth"
	"github.com/dmarc-milter/dmarc-milter/milter"
)

// checkCmd evaluates a saved message offline, through the same
// milter.Transaction the daemon uses, and prints our Authentication-Results
// with a readable trace of every step.
func checkCmd(args []string, stdout, stderr io.Writer) int {
	fs, config := checkFlagSet(stderr)
	ip := fs.String("ip", "", "SMTP client address (default: from the topmost Received field)")
	helo := fs.String("helo", "", "HELO name (default: from the topmost Received field)")
	mailFrom := fs.String("mail-from", "", "envelope sender (default: Return-Path; \"<>\" for the null path)")
	var rcpts stringList
	fs.Var(&rcpts, "rcpt", "envelope recipient (repeatable; default: none)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: dmarc-milter check [-ip A] [-helo H] [-mail-from S] [-rcpt R] [-config FILE] [decision flags] message.eml")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	st, err := settingsFrom(fs, *config)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter check: %v\n", err)
		return 2
	}
	raw, err := readMessageFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter check: %v\n", err)
		return 2
	}
	fields, body := splitMessage(raw)

	// The envelope: flags, else what the receiving MTA recorded.
	rip, rhelo := receivedClient(fields)
	if *ip == "" {
		*ip = rip
	}
	if *helo == "" {
		*helo = rhelo
	}
	sender := *mailFrom
	if sender == "" {
		sender = returnPath(fields)
	}
	if sender == "<>" {
		sender = ""
	}
	addr := net.ParseIP(*ip)
	if addr == nil {
		fmt.Fprintln(stderr, "dmarc-milter check: no client address: give -ip (the message has no Received field with one)")
		return 2
	}

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	deps, res, err := buildDeps(st, logger)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter check: %v\n", err)
		return 2
	}
	defer res.Close()
	srv, err := milter.NewServer(st.Milter, deps)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter check: %v\n", err)
		return 2
	}

	w := bufio.NewWriter(stdout)
	defer w.Flush()
	fmt.Fprintf(w, "client %s helo %q mail-from <%s>\n", addr, *helo, sender)
	if a, ok := netip.AddrFromSlice(addr); ok {
		for _, p := range st.Milter.TrustedNetworks {
			if p.Contains(a.Unmap()) {
				fmt.Fprintf(w, "note: %s is in trusted network %s: the daemon would accept it without evaluation\n", addr, p)
			}
		}
	}
	tx := srv.Begin(nil, milter.ConnInfo{Host: *helo, IP: addr, Helo: *helo}, sender, "")
	for _, r := range rcpts {
		if reply := tx.AddRcpt(r); reply != "" {
			fmt.Fprintf(w, "rcpt %s: %s (the sender retries it in a transaction of its own)\n", r, reply)
		}
	}
	for _, f := range fields {
		tx.AddHeader(f[0], f[1])
	}
	tx.EndHeaders()
	for len(body) > 0 {
		n := min(len(body), 64<<10)
		tx.WriteBody(body[:n])
		body = body[n:]
	}
	d := tx.Finish()
	if d == nil {
		fmt.Fprintf(w, "not evaluated: %s\n", tx.Skip)
		return 0
	}
	printDecision(w, d)
	return 0
}

// notForCheck are the serve flags that cannot change an offline
// evaluation: the socket, the logs, the connection timeout, and
// skip-authenticated (check has no SMTP AUTH). A configuration file may
// still set them; check loads and ignores them.
var notForCheck = map[string]bool{
	"listen": true, "socket-mode": true, "socket-group": true, "idle-timeout": true, "skip-authenticated": true,
	"log-format": true, "log-level": true, "log-output": true, "metrics-listen": true,
}

// checkFlagSet is the serve flag set without notForCheck, sharing its
// values, so that settingsFrom merges them exactly as serve does.
func checkFlagSet(stderr io.Writer) (*flag.FlagSet, *string) {
	all, config := flagSet(io.Discard)
	fs := flag.NewFlagSet("dmarc-milter check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	all.VisitAll(func(f *flag.Flag) {
		if !notForCheck[f.Name] {
			fs.Var(f.Value, f.Name, f.Usage)
		}
	})
	return fs, config
}

func printDecision(w io.Writer, d *milter.Decision) {
	fmt.Fprintf(w, "\nAuthentication-Results:%s\n\n", strings.ReplaceAll(d.AuthResults, "\r\n", "\n"))
	act := string(d.Action)
	if d.Reply != "" {
		act += ": " + d.Reply
	}
	fmt.Fprintf(w, "action: %s\n", act)
	if d.Why != "" {
		fmt.Fprintf(w, "why: %s\n", d.Why)
	}
	fmt.Fprintln(w, "\ntrace:")
	fmt.Fprintf(w, "  spf: %s (%s %s)", d.SPF.Result, d.SPF.Identity, d.SPF.Sender)
	if d.SPF.Err != nil && d.SPF.Result != "pass" {
		fmt.Fprintf(w, ": %v", d.SPF.Err)
	}
	fmt.Fprintln(w)
	if len(d.DKIM) == 0 {
		fmt.Fprintln(w, "  dkim: no signature")
	}
	for i, r := range d.DKIM {
		fmt.Fprintf(w, "  dkim #%d: %s d=%s s=%s a=%s", i+1, r.Result, r.Domain, r.Selector, r.Algorithm)
		if r.Reason != "" {
			fmt.Fprintf(w, " (%s)", r.Reason)
		}
		fmt.Fprintln(w)
	}
	switch a := d.ARC; a.Result {
	case auth.ARCPass:
		fmt.Fprintf(w, "  arc: pass, %d set(s), latest sealed by d=%s for %s (%s)\n", a.Instance, a.SealDomain, a.AuthServID, strings.Join(strings.Fields(a.AAR), " "))
	case auth.ARCFail:
		fmt.Fprintf(w, "  arc: fail (%s)\n", a.Reason)
	}
	fmt.Fprintf(w, "  from: %d field(s), domains %s", d.Author.Fields, strings.Join(d.Author.Domains, ", "))
	if d.AuthorErr != nil {
		fmt.Fprintf(w, " (%v)", d.AuthorErr)
	}
	fmt.Fprintln(w)
	for _, ev := range d.Evals {
		fmt.Fprintf(w, "  dmarc %s: %s", ev.FromDomain, ev.Result)
		if ev.Record != nil {
			fmt.Fprintf(w, ", record at %s: %q", ev.PolicyDomain, ev.Record.Raw)
		}
		fmt.Fprintln(w)
		for _, r := range ev.Reasons {
			fmt.Fprintf(w, "    %s\n", r)
		}
		if ev.Record != nil {
			for _, warn := range ev.Record.Warnings {
				fmt.Fprintf(w, "    record warning: %s\n", warn)
			}
			fmt.Fprintf(w, "    policy %s=%s, disposition %s\n", ev.Applied, ev.Policy, ev.Disposition)
		}
		for _, o := range ev.Overrides {
			fmt.Fprintf(w, "    override %s: %s\n", o.Type, o.Comment)
		}
		if ev.Err != nil {
			fmt.Fprintf(w, "    error: %v\n", ev.Err)
		}
	}
	fmt.Fprintf(w, "  time: %s\n", d.Elapsed.Round(1e6))
}

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// maxCheckMessage bounds what check reads; the daemon streams instead.
const maxCheckMessage = 64 << 20

func readMessageFile(path string) ([]byte, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxCheckMessage+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxCheckMessage {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxCheckMessage)
	}
	return b, nil
}

// splitMessage turns a saved message (LF or CRLF line ends, possibly an
// mbox "From " line) into header fields as an MTA hands them to a milter
// (value with its leading space, folded lines joined by LF) and the body
// with CRLF line ends.
func splitMessage(raw []byte) (fields [][2]string, body []byte) {
	raw = bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
	if bytes.HasPrefix(raw, []byte("From ")) {
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			raw = raw[i+1:]
		}
	}
	head, rest, found := bytes.Cut(raw, []byte("\n\n"))
	if !found {
		head, rest = bytes.TrimSuffix(raw, []byte("\n")), nil
	}
	for _, line := range strings.Split(string(head), "\n") {
		if line == "" {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1][1] += "\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields = append(fields, [2]string{name, value})
	}
	body = bytes.ReplaceAll(rest, []byte("\n"), []byte("\r\n"))
	return fields, body
}

var receivedRE = regexp.MustCompile(`(?is)^\s*from\s+(\S+).*?\[(?:IPv6:)?([0-9a-f.:]+)\]`)

// receivedClient reads the client address and HELO that the receiving
// MTA recorded in the topmost Received field (RFC 5321 §4.4).
func receivedClient(fields [][2]string) (ip, helo string) {
	for _, f := range fields {
		if strings.EqualFold(f[0], "Received") {
			if m := receivedRE.FindStringSubmatch(f[1]); m != nil {
				return m[2], m[1]
			}
			return "", ""
		}
	}
	return "", ""
}

func returnPath(fields [][2]string) string {
	for _, f := range fields {
		if strings.EqualFold(f[0], "Return-Path") {
			v := strings.TrimSpace(f[1])
			if v == "<>" {
				return "<>"
			}
			return strings.Trim(v, "<>")
		}
	}
	return ""
}
