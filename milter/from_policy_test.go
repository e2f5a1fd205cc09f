package milter

import (
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// fromPolicyZone: one domain per policy, and an envelope domain whose SPF
// lookup fails, so that a 4xx could come from somewhere.
func fromPolicyZone(t *testing.T) *dnstest.Zone {
	t.Helper()
	zone := dnstest.NewZone(dnstest.Options{})
	if err := zone.Add(
		dnstest.Record{Name: "_dmarc.bank.test", Type: "TXT", Value: "v=DMARC1; p=reject"},
		dnstest.Record{Name: "_dmarc.quar.test", Type: "TXT", Value: "v=DMARC1; p=quarantine"},
		dnstest.Record{Name: "_dmarc.open.test", Type: "TXT", Value: "v=DMARC1; p=none"},
		dnstest.Record{Name: "_dmarc.open2.test", Type: "TXT", Value: "v=DMARC1; p=none"},
		dnstest.Record{Name: "broken.test", Type: "TXT", Behavior: "servfail"},
	); err != nil {
		t.Fatal(err)
	}
	return zone
}

// sendFrom sends one unauthenticated message with the given From fields
// over the milter protocol.
func sendFrom(t *testing.T, tm *testMilter, mailFrom string, from ...string) outcome {
	t.Helper()
	c := dialMilter(t, tm.addr)
	if _, err := c.connect("mx.attacker.example.org", "198.51.100.1", "mx.attacker.example.org"); err != nil {
		t.Fatal(err)
	}
	var fields []testcase.Field
	for _, f := range from {
		fields = append(fields, testcase.Field{Name: "From", Value: " " + f})
	}
	fields = append(fields, testcase.Field{Name: "To", Value: " <sink@lab.test>"}, testcase.Field{Name: "Subject", Value: " test"})
	return c.send(t, envelope{MailFrom: mailFrom}, fields, []byte("body\r\n"))
}

// dmarcResults lists the "dmarc=RESULT ... header.from=DOMAIN" pairs of
// our A-R, in order, as "RESULT DOMAIN" (DOMAIN empty when not written).
func dmarcResults(o outcome) []string {
	var out []string
	for _, v := range arValues(o.Header) {
		if !strings.HasPrefix(strings.TrimSpace(v), "lab.test") {
			continue
		}
		for _, part := range strings.Split(v, ";") {
			f := strings.Fields(part)
			if len(f) == 0 || !strings.HasPrefix(f[0], "dmarc=") {
				continue
			}
			r := strings.TrimPrefix(f[0], "dmarc=")
			dom := ""
			for _, w := range f {
				if strings.HasPrefix(w, "header.from=") {
					dom = strings.TrimPrefix(w, "header.from=")
				}
			}
			out = append(out, strings.TrimSpace(r+" "+dom))
		}
	}
	return out
}

func fromPolicyConfig() Config {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	cfg.Quarantine = "hold"
	cfg.MessageTimeout = 3 * time.Second
	return cfg
}

// TestRejectMultiDomainFrom: reject_multi_domain_from refuses a From that
// names several distinct domains (RFC 7489 §6.6.1 leaves such messages to
// the receiver) and nothing else; without it every domain is evaluated
// and the strictest policy wins (RFC 9989 §4.4).
func TestRejectMultiDomainFrom(t *testing.T) {
	zone := fromPolicyZone(t)
	base := fromPolicyConfig()
	multi := base
	multi.RejectMultiDomainFrom = true
	multiMonitor := multi
	multiMonitor.Mode = "monitor"
	servers := map[string]*testMilter{
		"default": startMilter(t, base, zone, policy.Options{}),
		"multi":   startMilter(t, multi, zone, policy.Options{}),
		"monitor": startMilter(t, multiMonitor, zone, policy.Options{}),
	}
	const several = "550 5.7.1 Message rejected: From names several domains"
	tests := []struct {
		name   string
		server string
		from   []string
		smtp   string
		queue  string
		reply  string   // exact, when not accepted
		dmarc  []string // our dmarc results, when accepted
	}{
		{"two domains", "multi", []string{"a@open.test, b@open2.test"}, "reject", "none", several, nil},
		{"two domains, one reject", "multi", []string{"a@open.test, ceo@bank.test"}, "reject", "none", several, nil},
		{"two fields, two domains", "multi", []string{"a@open.test", "b@open2.test"}, "reject", "none", several, nil},
		{"group with two domains", "multi", []string{"Team: a@open.test, b@open2.test;"}, "reject", "none", several, nil},
		{"monitor: evaluated, accepted", "monitor", []string{"ceo@bank.test, a@open.test"}, "accept", "delivered", "", []string{"fail bank.test", "fail open.test"}},
		{"one domain twice: evaluated", "multi", []string{"a@open.test, B <b@Open.Test.>"}, "accept", "delivered", "", []string{"fail open.test"}},
		{"one domain twice, two fields: evaluated", "multi", []string{"a@open.test", "b@open.test"}, "accept", "delivered", "", []string{"fail open.test"}},
		{"one domain twice, p=reject applies", "multi", []string{"ceo@bank.test, cfo@bank.test"}, "reject", "none", "550 5.7.1 Email rejected per DMARC policy for bank.test", nil},
		{"without setting: strictest is reject", "default", []string{"a@open.test, b@quar.test, ceo@bank.test"}, "reject", "none", "550 5.7.1 Email rejected per DMARC policy for bank.test", nil},
		{"without setting: strictest is quarantine", "default", []string{"a@open.test, b@quar.test"}, "accept", "hold", "", []string{"fail open.test", "fail quar.test"}},
		{"without setting: two p=none delivered", "default", []string{"a@open.test", "b@open2.test"}, "accept", "delivered", "", []string{"fail open.test", "fail open2.test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := sendFrom(t, servers[tt.server], "x@attacker.example.org", tt.from...)
			if o.SMTP != tt.smtp || o.Queue != tt.queue {
				t.Fatalf("%s %s %q, want %s %s\nA-R: %q", o.SMTP, o.Queue, o.Reply, tt.smtp, tt.queue, arValues(o.Header))
			}
			if tt.smtp != "accept" {
				if o.Reply != tt.reply {
					t.Errorf("reply %q, want %q", o.Reply, tt.reply)
				}
				return
			}
			if got := dmarcResults(o); strings.Join(got, ",") != strings.Join(tt.dmarc, ",") {
				t.Errorf("dmarc results %q, want %q\nA-R: %q", got, tt.dmarc, arValues(o.Header))
			}
		})
	}
}

// TestRejectMultiDomainFromWithAuthorError: with malformed From accepted,
// a From with several domains and an unusable mailbox is still a From
// with several domains.
func TestRejectMultiDomainFromWithAuthorError(t *testing.T) {
	cfg := fromPolicyConfig()
	cfg.RejectMultiDomainFrom = true
	cfg.OnMalformedFrom = "accept"
	tm := startMilter(t, cfg, fromPolicyZone(t), policy.Options{})
	o := sendFrom(t, tm, "x@attacker.example.org", "a@open.test, b@open2.test, c@[192.0.2.1]")
	const want = "550 5.7.1 Message rejected: From names several domains"
	if o.SMTP != "reject" || o.Reply != want {
		t.Errorf("%s %s %q, want reject %q\nA-R: %q", o.SMTP, o.Queue, o.Reply, want, arValues(o.Header))
	}
}

// TestNoUsableFromDomain: a From without a usable domain is a permanent
// defect (RFC 5322 §3.6, RFC 9989 §4.4): the default refuses it with a
// fixed reply, and no setting turns it into a 4xx, not even a failing SPF
// lookup with on_temperror=tempfail.
func TestNoUsableFromDomain(t *testing.T) {
	zone := fromPolicyZone(t)
	reject := fromPolicyConfig() // on_malformed_from=reject, on_temperror=tempfail
	accept := reject
	accept.OnMalformedFrom = "accept"
	multi := reject
	multi.RejectMultiDomainFrom = true
	servers := map[string]*testMilter{
		"reject": startMilter(t, reject, zone, policy.Options{}),
		"accept": startMilter(t, accept, zone, policy.Options{}),
		"multi":  startMilter(t, multi, zone, policy.Options{}),
	}
	if reject.OnMalformedFrom != "reject" || reject.OnTempError != "tempfail" {
		t.Fatalf("defaults changed: on_malformed_from=%s on_temperror=%s", reject.OnMalformedFrom, reject.OnTempError)
	}
	froms := map[string][]string{
		"empty group":          {"undisclosed-recipients:;"},
		"empty group, spaces":  {"Team: ;"},
		"no domain":            {"nobody"},
		"empty domain":         {"Billing <billing@>"},
		"domain literal":       {"a@[192.0.2.1]"},
		"two unusable fields":  {"undisclosed-recipients:;", "a@[192.0.2.1]"},
		"ideographic dot only": {"a@\u3002"},
	}
	for srv, tm := range servers {
		for name, from := range froms {
			for _, mailFrom := range []string{"x@attacker.example.org", "x@broken.test", ""} {
				t.Run(srv+"/"+name+"/"+mailFrom, func(t *testing.T) {
					t.Parallel()
					o := sendFrom(t, tm, mailFrom, from...)
					if o.SMTP == "tempfail" || strings.HasPrefix(o.Reply, "4") {
						t.Fatalf("4xx for a From without a domain: %q", o.Reply)
					}
					switch srv {
					case "reject", "multi":
						if want := "550 5.7.1 Message rejected: no usable From domain"; o.SMTP != "reject" || o.Reply != want {
							t.Errorf("%s %q, want reject %q", o.SMTP, o.Reply, want)
						}
					case "accept":
						if o.SMTP != "accept" || o.Queue != "delivered" {
							t.Errorf("%s %s %q, want delivered", o.SMTP, o.Queue, o.Reply)
						}
						for _, r := range dmarcResults(o) {
							if strings.HasPrefix(r, "pass") {
								t.Errorf("dmarc=%s for a From without a domain", r)
							}
						}
					}
				})
			}
		}
	}
}

// TestTrailingIDNADot: "bank.test。" is bank.test (RFC 3490 §3.1: U+3002,
// U+FF0E and U+FF61 separate labels), like "bank.test.": with malformed
// From accepted it must not slip past bank.test's p=reject.
func TestTrailingIDNADot(t *testing.T) {
	cfg := fromPolicyConfig()
	cfg.OnMalformedFrom = "accept"
	tm := startMilter(t, cfg, fromPolicyZone(t), policy.Options{})
	for _, from := range []string{
		"ceo@bank.test.",
		"ceo@bank.test\u3002",
		"CEO <ceo@Bank.Test\uff0e>",
		"ceo@bank\uff61test\uff61",
	} {
		t.Run(from, func(t *testing.T) {
			t.Parallel()
			o := sendFrom(t, tm, "x@attacker.example.org", from)
			if want := "550 5.7.1 Email rejected per DMARC policy for bank.test"; o.SMTP != "reject" || o.Reply != want {
				t.Errorf("%s %s %q, want reject %q\nA-R: %q", o.SMTP, o.Queue, o.Reply, want, arValues(o.Header))
			}
		})
	}
}
