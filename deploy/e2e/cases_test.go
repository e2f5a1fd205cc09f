package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// caseDir is one directory in the shared case layout (cases/, zone/,
// psl/) and the keys its cases sign with.
type caseDir struct {
	dir, keys string
}

// acceptanceDirs returns the shared acceptance cases ($DMARC_CASES_DIR,
// else shared/cases beside the repository, as in CI) and, when present,
// our own testdata/cases.
func acceptanceDirs(t *testing.T) []caseDir {
	t.Helper()
	shared := os.Getenv("DMARC_CASES_DIR")
	if shared == "" {
		shared = filepath.Join(repoRoot, "..", "shared", "cases")
	}
	shared, _ = filepath.Abs(shared)
	if _, err := os.Stat(filepath.Join(shared, "cases")); err != nil {
		if e2eRequired() || os.Getenv("CI") != "" {
			t.Fatalf("acceptance cases not found at %s (set DMARC_CASES_DIR)", shared)
		}
		t.Skipf("acceptance cases not found at %s (set DMARC_CASES_DIR)", shared)
	}
	dirs := []caseDir{{shared, filepath.Join(shared, "keys")}}
	own, _ := filepath.Abs(filepath.Join(repoRoot, "testdata", "cases"))
	if _, err := os.Stat(filepath.Join(own, "cases")); err == nil {
		dirs = append(dirs, caseDir{own, filepath.Join(repoRoot, "testdata", "keys")})
	}
	return dirs
}

// postfixAltered names cases that Postfix itself changes on the way, so
// that the milter never sees the case as written, with the reason. Such a
// case is skipped here; TestAcceptanceCases in ./milter runs it over a
// plain milter client. A case whose delivered header differs from the
// submitted one without being listed here fails: Postfix must not mask a
// case silently.
var postfixAltered = map[string]string{}

// caseRun is one case sent in one spec mode, and what came of it.
type caseRun struct {
	c        *testcase.Case
	mode     string
	outcome  testcase.Outcome
	altered  string // how Postfix changed the header, "" if it did not
	err      error  // the run itself failed (not the case's verdict)
	duration time.Duration
}

// TestPostfixCases sends every acceptance case through a real Postfix
// (XCLIENT for the client address, name and HELO of each case) to one
// daemon per spec mode, with quarantine=hold and authserv-id lab.test as
// the cases' README prescribes, and judges the SMTP reply, the queue the
// message ended in and the Authentication-Results Postfix stored with
// internal/testcase's Check.
func TestPostfixCases(t *testing.T) {
	requirePostfix(t)
	dirs := acceptanceDirs(t)
	var cases []*testcase.Case
	keysOf := map[*testcase.Case]string{}
	for _, d := range dirs {
		cs, err := testcase.LoadDir(d.dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			keysOf[c] = d.keys
		}
		cases = append(cases, cs...)
	}
	shared := dirs[0].dir
	// One zone for all cases; each case brings its own records and two
	// cases may not disagree (the cases' README), so this is safe and
	// BuildZone reports any conflict.
	zone, err := testcase.BuildZone(filepath.Join(shared, "zone", "base.json"), dirs[0].keys, cases)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dnstest.Start(zone)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	bin := daemonBinary(t)
	common := []string{"-dns", srv.Addr(), "-authserv-id", authservID, "-trusted-networks", "",
		"-mode", "enforce", "-quarantine", "hold",
		// Cases whose DNS never answers must end well within Postfix's
		// milter timeouts; a few seconds is what the cases expect.
		"-message-timeout", "5s"}
	modes := []string{testcase.ModeRFC9989, testcase.ModeRFC7489}
	var services []smtpdService
	for _, mode := range modes {
		args := append([]string{"-spec", mode}, common...)
		if mode == testcase.ModeRFC7489 {
			args = append(args, "-psl", filepath.Join(shared, "psl", "public_suffix_list.dat"))
		}
		d := startDaemon(t, bin, mode, args...)
		services = append(services, smtpdService{Name: mode, Milter: d.milter})
	}
	pf := startPostfix(t, services)
	noHeaderRewrite(t, pf)
	mbox := newMailbox(pf.maildir)

	start := time.Now()
	var runs []*caseRun
	for _, mode := range modes {
		for _, c := range cases {
			runs = append(runs, &caseRun{c: c, mode: mode})
		}
	}
	// Postfix and the daemons take several messages at once; the test
	// goroutines only wait on the network and the mailbox.
	const workers = 8
	work := make(chan *caseRun)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				t0 := time.Now()
				r.outcome, r.altered, r.err = runCase(pf, mbox, pf.addrs[r.mode], r.c, keysOf[r.c])
				r.duration = time.Since(t0)
			}
		}()
	}
	for _, r := range runs {
		work <- r
	}
	close(work)
	wg.Wait()
	t.Logf("%d cases x %d modes through Postfix in %v", len(cases), len(modes), time.Since(start).Round(time.Millisecond))

	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			for _, r := range runs {
				if r.mode != mode {
					continue
				}
				t.Run(r.c.ID, func(t *testing.T) {
					if why, ok := postfixAltered[r.c.ID]; ok {
						t.Skip("Postfix alters this case: " + why)
					}
					if r.err != nil {
						t.Fatalf("%s: %v", r.c.Title, r.err)
					}
					if r.altered != "" {
						t.Errorf("Postfix changed the message on the way (list the case in postfixAltered if that is legitimate): %s", r.altered)
					}
					cerr, adv := r.c.Check(mode, authservID, r.outcome)
					for _, a := range adv {
						t.Logf("advisory: %s", a)
					}
					if cerr != nil {
						t.Errorf("%s\n%v\nA-R: %q", r.c.Title, cerr, arValues(r.outcome.Header))
					}
				})
			}
		})
	}
}

// noHeaderRewrite turns off Postfix's header rewriting for every client
// and restarts the instance. smtpd takes the loopback test client for a
// local one (local_header_rewrite_clients = permit_inet_interfaces,
// decided before XCLIENT changes the address), and cleanup(8) then adds a
// missing From (the envelope sender), Date and Message-ID and appends
// @myorigin to bare addresses: cases about a missing or domain-less From
// would reach the milter repaired. Mail from a real remote client is not
// rewritten (remote_header_rewrite_domain is empty), which this restores.
func noHeaderRewrite(t *testing.T, pf *postfixInstance) {
	t.Helper()
	if out, err := pf.command("postconf", "-e", "local_header_rewrite_clients="); err != nil {
		t.Fatalf("postconf -e: %v\n%s", err, out)
	}
	pid := pf.masterPID()
	if out, err := pf.postfix("stop"); err != nil {
		t.Fatalf("postfix stop: %v\n%s", err, out)
	}
	deadline := time.Now().Add(waitLimit)
	for pid > 0 && processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("Postfix master %d still running after stop", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := pf.postfix("start"); err != nil {
		t.Fatalf("postfix start: %v\n%s", err, out)
	}
	for name, addr := range pf.addrs {
		if err := waitListening(addr, nil); err != nil {
			t.Fatalf("smtpd %s on %s after restart: %v", name, addr, err)
		}
	}
}

// arValues lists the A-R fields of a header, for failure messages.
func arValues(h []testcase.Field) []string {
	var out []string
	for _, f := range h {
		if strings.EqualFold(f.Name, "Authentication-Results") {
			out = append(out, strings.TrimSpace(f.Value))
		}
	}
	return out
}

// runCase builds and signs c, submits it over SMTP with the case's
// envelope and finds out where Postfix put it. The error is for failures
// of the harness, not of the case.
func runCase(pf *postfixInstance, mbox *mailbox, addr string, c *testcase.Case, keys string) (testcase.Outcome, string, error) {
	var o testcase.Outcome
	msg, err := c.Build(keys, time.Now())
	if err != nil {
		return o, "", err
	}
	submitted, _, err := testcase.SplitMessage(msg)
	if err != nil {
		return o, "", err
	}
	o.Submitted = submitted
	r, err := submit(addr, c.Envelope, msg)
	if err != nil {
		return o, "", err
	}
	o.Reply = fmt.Sprintf("%d %s", r.Code, r.Text)
	switch {
	case r.Code/100 == 4:
		o.SMTP, o.Queue = "tempfail", "none"
		return o, "", nil
	case r.Code/100 == 5:
		o.SMTP, o.Queue = "reject", "none"
		return o, "", nil
	}
	o.SMTP = "accept"
	id := r.QueueID()
	if id == "" {
		return o, "", fmt.Errorf("reply %v has no queue ID", r)
	}
	deadline := time.Now().Add(waitLimit)
	for {
		// A milter quarantine sends the message straight to the hold
		// queue (cleanup(8)); hold is not a hashed queue directory.
		if _, err := os.Stat(filepath.Join(pf.root, "queue", "hold", id)); err == nil {
			o.Queue = "hold"
			o.Header, err = pf.heldHeader(id)
			if err != nil {
				return o, "", err
			}
			break
		}
		if raw := mbox.find(id); raw != nil {
			o.Queue = "delivered"
			o.Header, _, err = testcase.SplitMessage(raw)
			if err != nil {
				return o, "", fmt.Errorf("delivered message: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			return o, "", fmt.Errorf("message %s neither held nor delivered within %v", id, waitLimit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return o, alteration(o.Submitted, o.Header), nil
}

// heldHeader reads the header of a message in the hold queue, with the
// milter's changes applied, through postcat(1).
func (p *postfixInstance) heldHeader(id string) ([]testcase.Field, error) {
	out, err := p.command("postcat", "-h", "-q", id)
	if err != nil {
		return nil, fmt.Errorf("postcat -q %s: %v\n%s", id, err, out)
	}
	fields, _, err := testcase.SplitMessage(out)
	if err != nil {
		return nil, fmt.Errorf("postcat -q %s: %v\n%s", id, err, out)
	}
	return fields, nil
}

// postfixReceivedRe matches the Received field our Postfix adds, which
// carries the queue ID: "by mx.lab.test (Postfix) with ESMTP id QUEUEID".
var postfixReceivedRe = regexp.MustCompile(`by mx\.lab\.test \(Postfix\) with E?SMTPS?A? id ([0-9A-Za-z]+)`)

// alteration compares the delivered header with the submitted one, after
// taking out what Postfix and the milter are expected to add or remove:
// Postfix's Received (and virtual(8)'s Return-Path, Delivered-To and
// X-Original-To),
// the milter's own A-R fields, and submitted A-R fields with our
// authserv-id (forgeries the milter deletes). It describes the first
// difference, or returns "".
func alteration(submitted, delivered []testcase.Field) string {
	norm := func(f testcase.Field) string {
		return strings.ToLower(strings.TrimSpace(f.Name)) + ":" + strings.ReplaceAll(f.Value, "\r\n", "\n")
	}
	sub := map[string]int{}
	for _, f := range submitted {
		sub[norm(f)]++
	}
	var got []string
	for _, f := range delivered {
		n := norm(f)
		if sub[n] > 0 {
			sub[n]--
			got = append(got, n)
			continue
		}
		name := strings.ToLower(strings.TrimSpace(f.Name))
		switch {
		case name == "received" && postfixReceivedRe.MatchString(f.Value):
		case name == "return-path", name == "delivered-to", name == "x-original-to":
		case name == "authentication-results" && isOurs(f.Value):
		default:
			return fmt.Sprintf("field %q was not submitted", truncate(n, 100))
		}
	}
	var want []string
	for _, f := range submitted {
		if strings.EqualFold(strings.TrimSpace(f.Name), "Authentication-Results") && isOurs(f.Value) {
			// Either removed (RFC 8601 §5) or left; Check judges that.
			if sub[norm(f)] > 0 {
				sub[norm(f)]--
				continue
			}
		}
		want = append(want, norm(f))
	}
	// Fields kept must keep their order, too.
	wi := 0
	for _, g := range got {
		for wi < len(want) && want[wi] != g {
			if !strings.HasPrefix(want[wi], "authentication-results:") {
				return fmt.Sprintf("field %q missing or moved", truncate(want[wi], 100))
			}
			wi++
		}
		wi++
	}
	for ; wi < len(want); wi++ {
		if !strings.HasPrefix(want[wi], "authentication-results:") {
			return fmt.Sprintf("field %q missing", truncate(want[wi], 100))
		}
	}
	return ""
}

// isOurs reports whether an A-R value carries our authserv-id (RFC 8601
// §2.2: the first token).
func isOurs(v string) bool {
	id, _, _ := strings.Cut(v, ";")
	f := strings.Fields(id)
	return len(f) > 0 && strings.EqualFold(f[0], authservID)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// submit sends one message with XCLIENT and returns the deciding reply.
// Unlike smtpClient it reports errors instead of failing a test, so many
// can run from plain goroutines.
func submit(addr string, env testcase.Envelope, msg []byte) (reply, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return reply{}, err
	}
	defer conn.Close()
	// Longer than the daemon's DNS budget, shorter than the test's.
	_ = conn.SetDeadline(time.Now().Add(45 * time.Second))
	tp := textproto.NewConn(conn)
	step := func(stage string, want int, cmd string) (reply, bool, error) {
		if cmd != "" {
			if err := tp.PrintfLine("%s", cmd); err != nil {
				return reply{}, false, err
			}
		}
		code, text, err := tp.ReadResponse(0)
		var perr *textproto.Error
		if err != nil && !errors.As(err, &perr) {
			return reply{}, false, fmt.Errorf("%s: %v", stage, err)
		}
		r := reply{stage, code, text}
		if code/100 == 4 || code/100 == 5 {
			return r, false, nil
		}
		if code != want {
			return r, false, fmt.Errorf("%s: %v, want %d", stage, r, want)
		}
		return r, true, nil
	}
	setup := []struct {
		stage, cmd string
		want       int
	}{
		{"greeting", "", 220},
		{"EHLO", "EHLO client.lab.test", 250},
		// Postfix XCLIENT_README; values are xtext (RFC 3461 §4).
		{"XCLIENT", fmt.Sprintf("XCLIENT ADDR=%s NAME=%s HELO=%s", env.ClientIP, xtext(env.ClientName), xtext(env.Helo)), 220},
		{"EHLO", "EHLO " + env.Helo, 250},
	}
	for _, s := range setup {
		r, ok, err := step(s.stage, s.want, s.cmd)
		if err != nil {
			return r, err
		}
		if !ok {
			// The cases count a 4xx/5xx at any stage, HELO included.
			return r, nil
		}
	}
	cmds := []struct{ stage, cmd string }{{"MAIL", "MAIL FROM:<" + env.MailFrom + ">"}}
	for _, rc := range env.Rcpt {
		cmds = append(cmds, struct{ stage, cmd string }{"RCPT", "RCPT TO:<" + rc + ">"})
	}
	for _, s := range cmds {
		r, ok, err := step(s.stage, 250, s.cmd)
		if err != nil || !ok {
			return r, err
		}
	}
	if r, ok, err := step("DATA", 354, "DATA"); err != nil || !ok {
		return r, err
	}
	w := tp.DotWriter()
	// DotWriter turns LF into CRLF itself.
	if _, err := w.Write(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))); err != nil {
		return reply{}, err
	}
	if err := w.Close(); err != nil {
		return reply{}, err
	}
	r, _, err := step("EOM", 250, "")
	_ = tp.PrintfLine("QUIT")
	return r, err
}

// mailbox indexes the test Maildir by the Postfix queue ID in each
// message's topmost Received field, reading every file once.
type mailbox struct {
	dir  string
	mu   sync.Mutex
	seen map[string]bool
	byID map[string][]byte
}

func newMailbox(dir string) *mailbox {
	return &mailbox{dir: dir, seen: map[string]bool{}, byID: map[string][]byte{}}
}

// find returns the delivered message with queue ID id, or nil.
func (m *mailbox) find(id string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if raw, ok := m.byID[id]; ok {
		return raw
	}
	for _, sub := range []string{"new", "cur"} {
		files, _ := os.ReadDir(filepath.Join(m.dir, sub))
		for _, f := range files {
			if m.seen[f.Name()] {
				continue
			}
			raw, err := os.ReadFile(filepath.Join(m.dir, sub, f.Name()))
			if err != nil {
				continue
			}
			m.seen[f.Name()] = true
			if mm := postfixReceivedRe.FindSubmatch(raw); mm != nil {
				m.byID[string(mm[1])] = raw
			}
		}
	}
	return m.byID[id]
}
