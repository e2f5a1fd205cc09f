package milter

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// TestPartlyUnusableFrom: a From with one usable and one unusable mailbox.
// Whatever the malformed-From setting, the usable domain's policy still
// applies; accepting malformed From must not switch DMARC off for it.
func TestPartlyUnusableFrom(t *testing.T) {
	zone := dnstest.NewZone(dnstest.Options{})
	if err := zone.Add(
		dnstest.Record{Name: "_dmarc.bank.test", Type: "TXT", Value: "v=DMARC1; p=reject"},
		dnstest.Record{Name: "_dmarc.open.test", Type: "TXT", Value: "v=DMARC1; p=none"},
	); err != nil {
		t.Fatal(err)
	}
	base := DefaultConfig()
	base.AuthServID = "lab.test"
	base.MessageTimeout = 3 * time.Second
	tm := startMilter(t, base, zone, policy.Options{})

	tests := []struct {
		name      string
		malformed string // OnMalformedFrom
		mode      string
		from      []string
		action    Action
		dmarc     []string // dmarc results in the A-R, in order
		why       string
	}{
		{"reject setting", "reject", "enforce", []string{"ceo@bank.test, x@[192.0.2.1]"}, ActionReject, []string{"permerror"}, "no usable From domain"},
		{"accept setting: bank.test still rejects", "accept", "enforce", []string{"ceo@bank.test, x@[192.0.2.1]"}, ActionReject, []string{"permerror", "fail"}, "no usable From domain"},
		{"accept setting: second field without domain", "accept", "enforce", []string{"ceo@bank.test", "nobody"}, ActionReject, []string{"permerror", "fail"}, "no usable From domain"},
		{"accept setting: p=none domain delivered", "accept", "enforce", []string{"a@open.test, b@"}, ActionAccept, []string{"permerror", "fail"}, "no usable From domain"},
		{"accept setting: nothing usable", "accept", "enforce", []string{"undisclosed-recipients:;"}, ActionAccept, []string{"permerror"}, "no usable From domain"},
		{"monitor keeps both reasons", "reject", "monitor", []string{"ceo@bank.test, x@[192.0.2.1]"}, ActionAccept, []string{"permerror", "fail"}, "no usable From domain; monitor mode: would reject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.OnMalformedFrom = tt.malformed
			cfg.Mode = tt.mode
			tx := tm.srv.Begin(&cfg, ConnInfo{Host: "mx.attacker.example.org", IP: net.ParseIP("198.51.100.1"), Helo: "mx.attacker.example.org"}, "x@attacker.example.org", "")
			for _, f := range tt.from {
				tx.AddHeader("From", " "+f)
			}
			tx.AddHeader("Subject", " test")
			tx.EndHeaders()
			tx.WriteBody([]byte("body\r\n"))
			d := tx.Finish()
			if d.Action != tt.action {
				t.Errorf("action %s (%s), want %s", d.Action, d.Reply, tt.action)
			}
			var got []string
			for _, ev := range d.Evals {
				got = append(got, string(ev.Result))
			}
			if strings.Join(got, ",") != strings.Join(tt.dmarc, ",") {
				t.Errorf("dmarc results %v, want %v\nA-R: %s", got, tt.dmarc, d.AuthResults)
			}
			if d.Why != tt.why {
				t.Errorf("why %q, want %q", d.Why, tt.why)
			}
			for _, r := range tt.dmarc {
				if !strings.Contains(d.AuthResults, "dmarc="+r) {
					t.Errorf("A-R lacks dmarc=%s: %s", r, d.AuthResults)
				}
			}
		})
	}
}

// TestDiscardedInHeader: records thrown away by discovery are named in the
// dmarc comment, so dmarc=none after two records is not read as "nothing
// published".
func TestDiscardedInHeader(t *testing.T) {
	zone := dnstest.NewZone(dnstest.Options{})
	if err := zone.Add(
		dnstest.Record{Name: "_dmarc.two.test", Type: "TXT", Value: "v=DMARC1; p=reject"},
		dnstest.Record{Name: "_dmarc.two.test", Type: "TXT", Value: "v=DMARC1; p=none"},
	); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	cfg.MessageTimeout = 3 * time.Second
	tm := startMilter(t, cfg, zone, policy.Options{})
	tx := tm.srv.Begin(&cfg, ConnInfo{IP: net.ParseIP("198.51.100.1"), Helo: "h.example"}, "x@attacker.example.org", "")
	tx.AddHeader("From", " a@two.test")
	tx.EndHeaders()
	d := tx.Finish()
	want := "dmarc=none (discarded 2 DMARC records at _dmarc.two.test) header.from=two.test"
	if got := strings.Join(strings.Fields(d.AuthResults), " "); !strings.Contains(got, want) {
		t.Errorf("A-R %q lacks %q", got, want)
	}
}

// TestMessageBudgetBoundsSilentDNS: with the production resolver settings
// (2s per attempt, 2 attempts: 4s per silent query) and DNS that never
// answers for the SPF record, three DKIM keys and the DMARC record, the
// message still ends at its budget with temperror. The default budget
// (20s) is what keeps a message inside Postfix's milter_content_timeout
// (300s), which Validate enforces; here a short one shows the bound holds.
func TestMessageBudgetBoundsSilentDNS(t *testing.T) {
	dir := filepath.Join("..", "testdata", "cases")
	c, err := testcase.Load(filepath.Join(dir, "cases", "559-every-key-and-dmarc-time-out.json"))
	if err != nil {
		t.Fatal(err)
	}
	zone, err := testcase.BuildZone("", filepath.Join("..", "testdata", "keys"), []*testcase.Case{c})
	if err != nil {
		t.Fatal(err)
	}
	if err := zone.Add(dnstest.Record{Name: "slow559.test", Type: "TXT", Behavior: "timeout"}); err != nil {
		t.Fatal(err)
	}
	dsrv, err := dnstest.Start(zone)
	if err != nil {
		t.Fatal(err)
	}
	defer dsrv.Close()
	res, err := dnsres.New(dnsres.Config{Servers: []string{dsrv.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	cfg.OnTempError = "accept"
	cfg.MessageTimeout = 1500 * time.Millisecond
	srv, err := NewServer(cfg, Deps{Resolver: res, Evaluator: policy.NewEvaluator(res, policy.Options{}), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := c.Build(filepath.Join("..", "testdata", "keys"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fields, body, err := testcase.SplitMessage(msg)
	if err != nil {
		t.Fatal(err)
	}
	tx := srv.Begin(nil, ConnInfo{IP: net.ParseIP("192.0.2.159"), Helo: "mail.slow559.test"}, "x@slow559.test", "")
	for _, f := range fields {
		tx.AddHeader(f.Name, f.Value)
	}
	tx.EndHeaders()
	tx.WriteBody(body)
	d := tx.Finish()
	if d.SPF.Result != "temperror" || len(d.Evals) != 1 || d.Evals[0].Result != policy.ResultTempError {
		t.Errorf("spf %s, evals %+v; want temperror for both\nA-R: %s", d.SPF.Result, d.Evals, d.AuthResults)
	}
	for _, r := range d.DKIM {
		if r.Result != "temperror" {
			t.Errorf("dkim %s for s=%s, want temperror", r.Result, r.Selector)
		}
	}
	if strings.Contains(d.AuthResults, dsrv.Addr()) {
		t.Errorf("A-R reveals the resolver address: %s", d.AuthResults)
	}
	if len(d.DKIM) != 3 {
		t.Errorf("%d DKIM results, want 3", len(d.DKIM))
	}
	// One silent query alone takes 4s with these settings; the budget
	// must cut everything off at 1.5s (slack for a loaded CI machine).
	if d.Elapsed > cfg.MessageTimeout+2*time.Second {
		t.Errorf("message took %s, budget %s", d.Elapsed, cfg.MessageTimeout)
	}
	if d.Action != ActionAccept {
		t.Errorf("action %s, want accept (on-temperror accept)", d.Action)
	}
}

// TestTooManyAuthors: past the bounds on From fields and Author Domains the
// message is refused (even with malformed From accepted), because what is
// not evaluated could hold a p=reject; up to the bounds all is evaluated.
func TestTooManyAuthors(t *testing.T) {
	zone := dnstest.NewZone(dnstest.Options{})
	if err := zone.Add(dnstest.Record{Name: "_dmarc.bank.test", Type: "TXT", Value: "v=DMARC1; p=reject"}); err != nil {
		t.Fatal(err)
	}
	base := DefaultConfig()
	base.AuthServID = "lab.test"
	base.MessageTimeout = 3 * time.Second
	tm := startMilter(t, base, zone, policy.Options{})
	domains := func(n int) string {
		var l []string
		for i := range n {
			l = append(l, "a@d"+strings.Repeat("x", i)+".test")
		}
		return strings.Join(l, ", ")
	}
	repeat := func(v string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = v
		}
		return out
	}
	tests := []struct {
		name   string
		mode   string
		from   []string
		action Action
		why    string
	}{
		{"ten domains: evaluated", "enforce", []string{domains(10)}, ActionAccept, ""},
		{"ten domains plus bank.test", "enforce", []string{domains(10) + ", ceo@bank.test"}, ActionReject, "too many From domains"},
		{"fifty fields: evaluated", "enforce", repeat("a@d.test", maxFromValues), ActionAccept, ""},
		{"fifty-one fields", "enforce", repeat("a@d.test", maxFromValues+1), ActionReject, "too many From domains"},
		{"monitor", "monitor", []string{domains(11)}, ActionAccept, "monitor mode: would reject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.Mode = tt.mode
			cfg.OnMalformedFrom = "accept"
			tx := tm.srv.Begin(&cfg, ConnInfo{IP: net.ParseIP("198.51.100.1"), Helo: "h.example"}, "x@attacker.example.org", "")
			for _, f := range tt.from {
				tx.AddHeader("From", " "+f)
			}
			tx.EndHeaders()
			d := tx.Finish()
			if d.Action != tt.action || d.Why != tt.why {
				t.Errorf("action %s why %q, want %s %q\nA-R: %s", d.Action, d.Why, tt.action, tt.why, d.AuthResults)
			}
			if ar := strings.Join(strings.Fields(d.AuthResults), " "); tt.why != "" && !strings.Contains(ar, "dmarc=permerror (too many From domains") {
				t.Errorf("A-R does not say why: %s", d.AuthResults)
			}
		})
	}
}

func TestHideResolver(t *testing.T) {
	tests := []struct{ in, want string }{
		{"key unavailable: lookup s._domainkey.a.test on 127.0.0.1:40123: i/o timeout", "key unavailable: lookup s._domainkey.a.test: i/o timeout"},
		{"key unavailable: lookup s._domainkey.a.test on [2001:db8::53]:53: server misbehaving", "key unavailable: lookup s._domainkey.a.test: server misbehaving"},
		{"key unavailable: lookup x.test on dns.example:53: no such host", "key unavailable: lookup x.test: no such host"},
		{"signature verification failed", "signature verification failed"},
		{"body hash did not verify on line 3: x", "body hash did not verify on line 3: x"},
	}
	for _, tt := range tests {
		if got := hideResolver(tt.in); got != tt.want {
			t.Errorf("hideResolver(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestBudgetStartsAtEndOfHeader: Postfix hands the header over only after
// the client's DATA has ended, so a DATA phase longer than the message
// budget must not turn healthy DNS into temperror (a 451 on every retry).
func TestBudgetStartsAtEndOfHeader(t *testing.T) {
	dsrv, err := dnstest.Start(loadZone(t, "milter.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer dsrv.Close()
	res, err := dnsres.New(dnsres.Config{Servers: []string{dsrv.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	cfg.MessageTimeout = 500 * time.Millisecond
	srv, err := NewServer(cfg, Deps{Resolver: res, Evaluator: policy.NewEvaluator(res, policy.Options{}), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	fields, body := signedAligned(t)
	tx := srv.Begin(nil, ConnInfo{IP: net.ParseIP("192.0.2.10"), Helo: "mx.aligned.example"}, "bounce@aligned.example", "")
	time.Sleep(2 * cfg.MessageTimeout) // the client's DATA
	for _, f := range fields {
		tx.AddHeader(f.Name, f.Value)
	}
	tx.EndHeaders()
	tx.WriteBody(body)
	d := tx.Finish()
	if d.SPF.Result != "pass" || len(d.DKIM) != 1 || d.DKIM[0].Result != "pass" || len(d.Evals) != 1 || d.Evals[0].Result != policy.ResultPass {
		t.Fatalf("after a slow DATA: %s", d.AuthResults)
	}
}
