package e2e

import (
	"fmt"
	"net/mail"
	"strings"
	"testing"
)

// authservID is the daemon's -authserv-id in these tests.
const authservID = "lab.test"

// tagHeader is what the daemon adds to quarantined mail in tag mode
// (-quarantine-header, passed explicitly below).
const tagHeader = "X-DMARC-Quarantine"

// outcome is where an accepted message ended up.
type outcome string

const (
	delivered outcome = "delivered" // in the Maildir
	held      outcome = "hold"      // in Postfix's hold queue (milter quarantine)
	refused   outcome = "none"      // not accepted
)

// want is the expected result of one message.
type want struct {
	code       int    // SMTP reply code of the deciding reply
	status     string // prefix of its enhanced status code, e.g. "5.7.1" or "4.7."
	textHas    string // substring of the reply text
	outcome    outcome
	dmarc      string // dmarc= of our A-R field (delivered mail only)
	spf, dkim  string // spf= and dkim= of our A-R field, when not ""
	headerFrom string
	// check runs more assertions on a delivered message.
	check func(t *testing.T, m *mail.Message, raw []byte)
}

// scenario is one message through Postfix and the daemon.
type scenario struct {
	name    string
	service string // smtpd listener: "hold" or "tag" quarantine mode
	env     envelope
	headers []header
	signFor string // DKIM-sign with d=signFor, s=sel, rsa2048; "" for none
	want    want
}

// attacker is the envelope of an unauthenticated sender (it publishes no
// SPF); the scenario's From decides which policy applies.
func attacker(n int) envelope {
	return envelope{
		ClientIP: fmt.Sprintf("192.0.2.%d", n),
		HELO:     "mx.attacker.example.org",
		MailFrom: "bounce@attacker.example.org",
	}
}

// TestPostfix sends the scenarios through a private Postfix with two
// daemons: quarantine as hold (Postfix hold queue) and as tag (header).
func TestPostfix(t *testing.T) {
	requirePostfix(t)
	bin := daemonBinary(t)
	dnsAddr := startDNS(t)
	common := []string{"-dns", dnsAddr, "-authserv-id", authservID, "-trusted-networks", "",
		"-mode", "enforce", "-on-temperror", "tempfail", "-spec", "rfc9989"}
	hold := startDaemon(t, bin, "hold", append(common, "-quarantine", "hold")...)
	tag := startDaemon(t, bin, "tag", append(common, "-quarantine", "tag", "-quarantine-header", tagHeader+": yes")...)
	pf := startPostfix(t, []smtpdService{{"hold", hold.milter}, {"tag", tag.milter}})

	scenarios := []scenario{
		{
			name:    "aligned DKIM, p=reject: delivered with dmarc=pass",
			service: "hold",
			env:     envelope{ClientIP: "192.0.2.202", HELO: "mail.esp.example.net", MailFrom: "bounce@e2e-reject.test"},
			headers: []header{{"From", "Alice <alice@e2e-reject.test>"}, {"To", "sink@lab.test"}, {"Subject", "aligned"}},
			signFor: "e2e-reject.test",
			want: want{code: 250, outcome: delivered, dmarc: "pass", dkim: "pass", spf: "fail",
				headerFrom: "e2e-reject.test"},
		},
		{
			name:    "spoofed From, p=reject: 550 5.7.1",
			service: "hold",
			env:     attacker(203),
			headers: []header{{"From", "CEO <ceo@e2e-reject.test>"}, {"To", "sink@lab.test"}, {"Subject", "wire money"}},
			want: want{code: 550, status: "5.7.1", outcome: refused,
				textHas: "Email rejected per DMARC policy for e2e-reject.test"},
		},
		{
			name:    "spoofed From, p=quarantine, hold mode: hold queue",
			service: "hold",
			env:     attacker(204),
			headers: []header{{"From", "q@e2e-quarantine.test"}, {"To", "sink@lab.test"}, {"Subject", "hold me"}},
			want:    want{code: 250, outcome: held},
		},
		{
			name:    "spoofed From, p=quarantine, tag mode: delivered with the tag header",
			service: "tag",
			env:     attacker(205),
			headers: []header{{"From", "q@e2e-quarantine.test"}, {"To", "sink@lab.test"}, {"Subject", "tag me"}},
			want: want{code: 250, outcome: delivered, dmarc: "fail", headerFrom: "e2e-quarantine.test",
				check: func(t *testing.T, m *mail.Message, _ []byte) {
					if got := m.Header.Get(tagHeader); got != "yes" {
						t.Errorf("%s = %q, want yes", tagHeader, got)
					}
				}},
		},
		{
			name:    "SERVFAIL on _dmarc: 451 temperror",
			service: "hold",
			env:     attacker(206),
			headers: []header{{"From", "s@e2e-servfail.test"}, {"To", "sink@lab.test"}, {"Subject", "dns down"}},
			want:    want{code: 451, status: "4.7.", outcome: refused},
		},
		{
			name:    "forged A-R with our authserv-id, p=none: removed, ours added",
			service: "hold",
			env:     attacker(207),
			headers: []header{
				{"Authentication-Results", "lab.test; dmarc=pass header.from=e2e-none.test"},
				{"Authentication-Results", "other.example; dmarc=pass header.from=e2e-none.test"},
				{"From", "n@e2e-none.test"}, {"To", "sink@lab.test"}, {"Subject", "trust me"},
			},
			want: want{code: 250, outcome: delivered, dmarc: "fail", headerFrom: "e2e-none.test",
				check: func(t *testing.T, m *mail.Message, raw []byte) {
					if strings.Contains(string(raw), "lab.test; dmarc=pass") {
						t.Error("the forged A-R field reached the mailbox")
					}
					// RFC 8601 §5: only fields with our authserv-id are ours to delete.
					if !strings.Contains(string(raw), "other.example; dmarc=pass") {
						t.Error("a foreign A-R field was removed")
					}
				}},
		},
	}

	key := loadKey(t, "rsa2048")
	for i, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			marker := fmt.Sprintf("e2e-%d-%s", i, strings.ReplaceAll(t.Name(), "/", "-"))
			msg := buildMessage(marker, sc.headers, "Test message body.\n")
			if sc.signFor != "" {
				msg = sign(t, msg, sc.signFor, "sel", key)
			}
			c := dialSMTP(t, pf.addrs[sc.service])
			c.hello(sc.env)
			r := c.send(sc.env, msg)
			c.quit()
			checkOutcome(t, pf, marker, r, sc.want)
		})
	}

	// go-milter drops a session's state after a final response; the daemon
	// must keep client IP and HELO for every message of a connection, or
	// SPF (which needs both) cannot pass the second time.
	t.Run("two messages on one connection keep client IP and HELO", func(t *testing.T) {
		env := envelope{ClientIP: "192.0.2.201", HELO: "mx.e2e-reject.test", MailFrom: "bounce@e2e-reject.test"}
		spoofed := attacker(201)
		spoofed.HELO = env.HELO
		c := dialSMTP(t, pf.addrs["hold"])
		c.hello(env)
		steps := []struct {
			env   envelope
			from  string
			rset  bool
			want  want
			label string
		}{
			{spoofed, "ceo@e2e-reject.test", false,
				want{code: 550, status: "5.7.1", outcome: refused}, "first"},
			{env, "news@e2e-reject.test", false,
				want{code: 250, outcome: delivered, dmarc: "pass", spf: "pass", headerFrom: "e2e-reject.test"}, "second"},
			{env, "news@e2e-reject.test", true,
				want{code: 250, outcome: delivered, dmarc: "pass", spf: "pass", headerFrom: "e2e-reject.test"}, "after-rset"},
		}
		for _, st := range steps {
			if st.rset {
				c.must(250, "RSET")
			}
			marker := "e2e-conn-" + st.label
			msg := buildMessage(marker, []header{{"From", st.from}, {"To", "sink@lab.test"}, {"Subject", st.label}}, st.label+"\n")
			r := c.send(st.env, msg)
			t.Run(st.label, func(t *testing.T) { checkOutcome(t, pf, marker, r, st.want) })
		}
		c.quit()
	})
}

// checkOutcome compares the deciding SMTP reply and where the message went
// with w.
func checkOutcome(t *testing.T, pf *postfixInstance, marker string, r reply, w want) {
	t.Helper()
	if r.Code != w.code {
		t.Fatalf("reply %v, want %d", r, w.code)
	}
	if w.status != "" && !strings.HasPrefix(r.Text, w.status) {
		t.Errorf("reply %v, want enhanced status %s", r, w.status)
	}
	if w.textHas != "" && !strings.Contains(r.Text, w.textHas) {
		t.Errorf("reply %v, want it to contain %q", r, w.textHas)
	}
	switch w.outcome {
	case refused:
		pf.notDelivered(t, marker)
	case held:
		id := r.QueueID()
		if id == "" {
			t.Fatalf("reply %v has no queue ID", r)
		}
		if q := pf.queueName(t, id); q != "hold" {
			t.Errorf("message %s is in queue %q, want hold", id, q)
		}
		pf.notDelivered(t, marker)
	case delivered:
		raw := pf.delivered(t, marker)
		m, ars := parseDelivered(t, raw)
		mine := ours(ars, authservID)
		if len(mine) != 1 {
			t.Fatalf("%d A-R fields with authserv-id %s, want 1:\n%s", len(mine), authservID, raw)
		}
		ar := mine[0]
		for method, wantRes := range map[string]string{"dmarc": w.dmarc, "spf": w.spf, "dkim": w.dkim} {
			if wantRes != "" && ar.Methods[method] != wantRes {
				t.Errorf("%s=%q, want %q in %q", method, ar.Methods[method], wantRes, ar.Raw)
			}
		}
		if w.headerFrom != "" && ar.HeaderFrom != w.headerFrom {
			t.Errorf("header.from=%q, want %q in %q", ar.HeaderFrom, w.headerFrom, ar.Raw)
		}
		// Downstream filters trust the topmost A-R (RFC 8601 §5), so ours
		// must come before any other.
		if first := ars[0]; first.AuthservID != authservID {
			t.Errorf("topmost A-R is %q, want ours", first.Raw)
		}
		if w.check != nil {
			w.check(t, m, raw)
		}
	}
}
