package milter

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// TestLocalPolicy runs local overrides end to end: each one changes the
// action and is recorded in the header with its RFC 9990 type.
func TestLocalPolicy(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	allow, _ := policy.NewDomainSet([]string{"quar.example"})
	reject, _ := policy.NewDomainSet([]string{"monitor.example"})
	cfg.Local = policy.LocalPolicy{AllowFrom: allow, RejectFrom: reject}
	cfg.Forwarders = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/30")}
	cfg.MailingListHosts, _ = policy.NewDomainSet([]string{"relay.example"})
	cfg.ForwarderHosts, _ = policy.NewDomainSet([]string{"fwd.example"})
	cfg.TrustedARC = []string{"mx.upstream.example"}
	cfg.RecipientModes = map[string]string{"watch.example": "monitor", "optout.example": "off"}
	tm := startMilter(t, cfg, loadZone(t, "milter.json"), policy.Options{})

	spoof, sbody, _ := testcase.SplitMessage(readMessage(t, "spoof"))
	quar, qbody, _ := testcase.SplitMessage(readMessage(t, "quarantine"))
	forged, fbody, _ := testcase.SplitMessage(readMessage(t, "forged-ar"))
	// ARC (RFC 8617): a forwarder that broke the author's DKIM seals what
	// it saw. Only a valid chain whose latest set is sealed by the
	// trusted upstream's own domain, saying dmarc=pass for this From,
	// overrides; a plain Authentication-Results field never does.
	sealAt := func(fs []testcase.Field, body []byte, d, id, results string, when time.Time) []testcase.Field {
		t.Helper()
		k, err := testcase.LoadKey("../testdata/keys", "rsa2048")
		if err != nil {
			t.Fatal(err)
		}
		out, err := testcase.SealARC(fs, body, testcase.ARCSealing{Domain: d, Selector: "arc", AuthServID: id, Results: results}, k, when)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	seal := func(fs []testcase.Field, body []byte, d, id, results string) []testcase.Field {
		t.Helper()
		return sealAt(fs, body, d, id, results, time.Now())
	}
	passed := "spf=fail smtp.mailfrom=list.example; dmarc=pass header.from=aligned.example"
	arcUp := seal(spoof, sbody, "upstream.example", "mx.upstream.example", passed)
	arcPlainAR := append([]testcase.Field{{Name: "Authentication-Results", Value: " mx.upstream.example; arc=pass (as.1=pass); dmarc=pass header.from=aligned.example"}}, spoof...)
	arcOwnSeal := seal(spoof, sbody, "evil.example", "mx.upstream.example", passed)
	arcSaidFail := seal(spoof, sbody, "upstream.example", "mx.upstream.example", "dmarc=fail header.from=aligned.example")
	arcOtherFrom := seal(spoof, sbody, "upstream.example", "mx.upstream.example", "dmarc=pass header.from=evil.example")
	arcNotLatest := seal(arcUp, sbody, "evil.example", "mx.evil.example", "arc=pass")
	arcUntrusted := seal(spoof, sbody, "evil.example", "mx.evil.example", passed)
	arcSuffix := seal(spoof, sbody, "example", "mx.upstream.example", passed)
	arcStale := sealAt(spoof, sbody, "upstream.example", "mx.upstream.example", passed, time.Now().Add(-8*24*time.Hour))

	tests := []struct {
		name       string
		ip         string
		rcpt       []string
		fields     []testcase.Field
		body       []byte
		smtp       string
		queue      string
		arContains string
	}{
		{"allow_from overrides quarantine", "198.51.100.1", nil, quar, qbody, "accept", "delivered", "override=local_policy"},
		{"reject_from turns p=none into reject", "198.51.100.1", nil, forged, fbody, "reject", "none", "550 5.7.1 Email rejected per local policy: DMARC failed for monitor.example"},
		{"trusted forwarder network", "203.0.113.2", nil, spoof, sbody, "accept", "delivered", "override=trusted_forwarder"},
		{"mailing list host, forward-confirmed", "203.0.113.7", nil, spoof, sbody, "accept", "delivered", "override=mailing_list"},
		{"mailing list host, PTR not confirmed", "203.0.113.8", nil, spoof, sbody, "reject", "none", ""},
		{"forwarder host name, forward-confirmed", "203.0.113.11", nil, spoof, sbody, "accept", "delivered", "override=trusted_forwarder"},
		{"forwarder host name over IPv6", "2001:db8::1", nil, spoof, sbody, "accept", "delivered", "override=trusted_forwarder"},
		{"forwarder check: PTR SERVFAIL", "203.0.113.9", nil, spoof, sbody, "tempfail", "none", "451 4.4.3 Could not check whether the client is a trusted forwarder, try again later"},
		{"forwarder check: address SERVFAIL", "203.0.113.10", nil, spoof, sbody, "tempfail", "none", ""},
		{"trusted upstream sealed dmarc=pass", "198.51.100.1", nil, arcUp, sbody, "accept", "delivered", "arc=pass (i=1 d=upstream.example); dmarc=fail (p=REJECT dis=NONE override=local_policy)"},
		{"trusted set changed after sealing", "198.51.100.1", nil, arcUp, append([]byte("spam\r\n"), sbody...), "reject", "none", ""},
		{"unsealed A-R naming the trusted upstream", "198.51.100.1", nil, arcPlainAR, sbody, "reject", "none", ""},
		{"trusted id in a set sealed by another domain", "198.51.100.1", nil, arcOwnSeal, sbody, "reject", "none", ""},
		{"trusted upstream sealed dmarc=fail", "198.51.100.1", nil, arcSaidFail, sbody, "reject", "none", ""},
		{"trusted upstream's pass is for another From", "198.51.100.1", nil, arcOtherFrom, sbody, "reject", "none", ""},
		{"trusted set is not the latest", "198.51.100.1", nil, arcNotLatest, sbody, "reject", "none", ""},
		{"untrusted sealer", "198.51.100.1", nil, arcUntrusted, sbody, "reject", "none", ""},
		{"trusted id sealed under a public suffix", "198.51.100.1", nil, arcSuffix, sbody, "reject", "none", ""},
		{"trusted seal eight days old (replayed)", "198.51.100.1", nil, arcStale, sbody, "reject", "none", ""},
		{"recipient monitor mode", "198.51.100.1", []string{"a@watch.example"}, spoof, sbody, "accept", "delivered", "dmarc=fail"},
		{"recipient off: no header", "198.51.100.1", []string{"a@optout.example"}, spoof, sbody, "accept", "delivered", "-"},
		{"recipients of one mode: parent and subdomain", "198.51.100.1", []string{"a@watch.example", "b@sub.watch.example"}, spoof, sbody, "accept", "delivered", "dmarc=fail"},
		{"enforced recipient", "198.51.100.1", []string{"a@lab.test"}, spoof, sbody, "reject", "none", "550 5.7.1 Email rejected per DMARC policy for aligned.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialMilter(t, tm.addr)
			if _, err := c.connect("client.example", tt.ip, "h.example"); err != nil {
				t.Fatal(err)
			}
			o := c.send(t, envelope{MailFrom: "x@attacker.example.org", Rcpt: tt.rcpt}, tt.fields, tt.body)
			if o.SMTP != tt.smtp || o.Queue != tt.queue {
				t.Fatalf("got %s/%s (%s), want %s/%s", o.SMTP, o.Queue, o.Reply, tt.smtp, tt.queue)
			}
			if o.SMTP != "accept" {
				// For a refusal, arContains is the reply.
				if o.Reply != tt.arContains && tt.arContains != "" {
					t.Errorf("reply %q, want %q", o.Reply, tt.arContains)
				}
				return
			}
			ours := ourARs(o.Header)
			switch {
			case tt.arContains == "-":
				if len(ours) != 0 {
					t.Errorf("header written: %q", ours)
				}
			case tt.arContains != "":
				if len(ours) != 1 || !strings.Contains(strings.Join(strings.Fields(ours[0]), " "), tt.arContains) {
					t.Errorf("A-R %q does not contain %q", ours, tt.arContains)
				}
			}
		})
	}
}

// TestRecipientModesSplit: recipients whose domains have different modes
// never share a transaction, so that neither mode can be bypassed
// through the other: the first recipient sets the mode, the others are
// deferred with 452 4.5.3 and come back in their own transaction.
func TestRecipientModesSplit(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	cfg.RecipientModes = map[string]string{"watch.example": "monitor", "optout.example": "off"}
	tm := startMilter(t, cfg, loadZone(t, "milter.json"), policy.Options{})
	spoof, sbody, _ := testcase.SplitMessage(readMessage(t, "spoof"))
	forged := append([]testcase.Field{{Name: "Authentication-Results", Value: " lab.test; dmarc=pass header.from=aligned.example"}}, spoof...)
	tests := []struct {
		name     string
		rcpt     []string
		smtp     string
		deferred []string
		ar       string // "" none of ours, else a part of it
	}{
		{"off domain added to an enforcing one", []string{"a@lab.test", "b@optout.example"}, "reject", []string{"b@optout.example"}, ""},
		{"enforcing domain added to an off one", []string{"b@optout.example", "a@lab.test"}, "accept", []string{"a@lab.test"}, ""},
		{"monitor after enforce", []string{"a@lab.test", "c@watch.example", "d@lab.test"}, "reject", []string{"c@watch.example"}, ""},
		{"monitor first", []string{"c@watch.example", "a@lab.test"}, "accept", []string{"a@lab.test"}, "dmarc=fail"},
		{"the deferred one alone", []string{"a@lab.test"}, "reject", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialMilter(t, tm.addr)
			if _, err := c.connect("client.example", "198.51.100.1", "h.example"); err != nil {
				t.Fatal(err)
			}
			o := c.send(t, envelope{MailFrom: "x@attacker.example.org", Rcpt: tt.rcpt}, forged, sbody)
			if o.SMTP != tt.smtp || strings.Join(o.Deferred, ",") != strings.Join(tt.deferred, ",") {
				t.Fatalf("got %s (%s), deferred %q; want %s, deferred %q", o.SMTP, o.Reply, o.Deferred, tt.smtp, tt.deferred)
			}
			if o.SMTP != "accept" {
				return
			}
			ours := ourARs(o.Header)
			// The forged field with our id is gone even when DMARC is off.
			switch {
			case tt.ar == "" && len(ours) != 0:
				t.Errorf("A-R with our id delivered: %q", ours)
			case tt.ar != "" && (len(ours) != 1 || !strings.Contains(ours[0], tt.ar)):
				t.Errorf("A-R %q, want one containing %q", ours, tt.ar)
			}
		})
	}
}

// ourARs returns the delivered Authentication-Results values with our
// authserv-id.
func ourARs(h []testcase.Field) []string {
	var ours []string
	for _, v := range arValues(h) {
		if strings.HasPrefix(strings.TrimSpace(v), "lab.test;") {
			ours = append(ours, v)
		}
	}
	return ours
}

// TestRejectFromBeatsUnsureForwarder: reject_from is applied before the
// forwarder rule, so a forwarder check that DNS left open does not turn
// its reject into a 451, also for a domain that publishes p=reject.
func TestRejectFromBeatsUnsureForwarder(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	reject, _ := policy.NewDomainSet([]string{"aligned.example"})
	cfg.Local = policy.LocalPolicy{RejectFrom: reject}
	cfg.ForwarderHosts, _ = policy.NewDomainSet([]string{"fwd.example"})
	tm, spoof, sbody := spoofMilter(t, cfg)
	c := dialMilter(t, tm.addr)
	if _, err := c.connect("client.example", "203.0.113.9", "h.example"); err != nil {
		t.Fatal(err)
	}
	if o := c.send(t, envelope{MailFrom: "x@attacker.example.org"}, spoof, sbody); o.SMTP != "reject" {
		t.Fatalf("got %s (%s), want reject", o.SMTP, o.Reply)
	}
}
