package milter

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

var update = flag.Bool("update", false, "rewrite golden files")

const repoTestdata = "../testdata"

func loadZone(t testing.TB, files ...string) *dnstest.Zone {
	t.Helper()
	z := dnstest.NewZone(dnstest.Options{KeyDir: filepath.Join(repoTestdata, "keys")})
	for _, f := range files {
		recs, err := dnstest.LoadFile(filepath.Join(repoTestdata, "zones", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := z.Add(recs...); err != nil {
			t.Fatal(err)
		}
	}
	return z
}

func loadKey(t testing.TB, name string) crypto.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoTestdata, "keys", name+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer)
}

type signSpec struct{ domain, selector, key string }

// readMessage loads testdata/messages/NAME.eml and signs it (each new
// signature on top, RFC 6376 §5.6).
func readMessage(t testing.TB, name string, sigs ...signSpec) []byte {
	t.Helper()
	msg, err := os.ReadFile(filepath.Join(repoTestdata, "messages", name+".eml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sigs {
		var out bytes.Buffer
		err := dkim.Sign(&out, bytes.NewReader(msg), &dkim.SignOptions{
			Domain: s.domain, Selector: s.selector, Signer: loadKey(t, s.key),
			HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"},
		})
		if err != nil {
			t.Fatal(err)
		}
		msg = out.Bytes()
	}
	return msg
}

// golden renders what the MTA was told, with the parts that change per
// run (signature bytes) masked.
func golden(o outcome) string {
	var b strings.Builder
	fmt.Fprintf(&b, "smtp: %s\nqueue: %s\n", o.SMTP, o.Queue)
	if o.Reply != "" {
		fmt.Fprintf(&b, "reply: %s\n", o.Reply)
	}
	sub := map[string]int{}
	for _, f := range o.Submitted {
		sub[f.Name+":"+f.Value]++
	}
	for _, f := range o.Header {
		if sub[f.Name+":"+f.Value] > 0 {
			sub[f.Name+":"+f.Value]--
			continue
		}
		v := strings.ReplaceAll(f.Value, "\r\n", "\n")
		v = headerB.ReplaceAllString(v, "header.b=<b>")
		fmt.Fprintf(&b, "added: %s:%s\n", f.Name, v)
	}
	for _, f := range o.Submitted {
		k := f.Name + ":" + f.Value
		if sub[k] > 0 && strings.EqualFold(f.Name, "Authentication-Results") {
			sub[k]--
			fmt.Fprintf(&b, "removed: %s\n", strings.ReplaceAll(k, "\r\n", "\n"))
		}
	}
	return b.String()
}

var headerB = regexp.MustCompile(`header\.b=("[^"]*"|[A-Za-z0-9+/=]+)`)

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s: got\n%s\nwant\n%s", name, got, want)
	}
}

type e2eMsg struct {
	name     string
	file     string
	sigs     []signSpec
	ip, helo string
	mailFrom string
	macros   []string
}

// TestEndToEnd drives the milter through go-milter's client with real
// DKIM signatures and DNS from testdata/zones, against golden files.
func TestEndToEnd(t *testing.T) {
	zone := loadZone(t, "milter.json")
	base := DefaultConfig()
	base.AuthServID = "lab.test"
	base.MessageTimeout = 3 * time.Second
	hold := base
	hold.Quarantine = "hold"
	monitor := base
	monitor.Mode = "monitor"
	accept := base
	accept.OnTempError = "accept"
	accept.OnMalformedFrom = "accept"

	servers := map[string]*testMilter{
		"tag":     startMilter(t, base, zone, policy.Options{}),
		"hold":    startMilter(t, hold, zone, policy.Options{}),
		"monitor": startMilter(t, monitor, zone, policy.Options{}),
		"accept":  startMilter(t, accept, zone, policy.Options{}),
	}
	aligned := []signSpec{{"aligned.example", "sel", "rsa2048"}}
	tests := []struct {
		server string
		msg    e2eMsg
	}{
		{"tag", e2eMsg{name: "aligned-dkim-pass", file: "aligned", sigs: aligned, ip: "192.0.2.99", helo: "mx.elsewhere.example", mailFrom: "bounce@elsewhere.example"}},
		{"tag", e2eMsg{name: "aligned-ed25519-and-esp", file: "aligned", sigs: []signSpec{{"esp.example", "sel", "rsa2048"}, {"aligned.example", "ed", "ed25519"}}, ip: "192.0.2.20", helo: "helo.esp.example", mailFrom: "b@esp.example"}},
		{"tag", e2eMsg{name: "aligned-spf-pass", file: "aligned", ip: "192.0.2.10", helo: "mx.aligned.example", mailFrom: "bounce@aligned.example"}},
		{"tag", e2eMsg{name: "spoof-reject", file: "spoof", ip: "198.51.100.7", helo: "mx.attacker.example.org", mailFrom: "x@attacker.example.org"}},
		{"monitor", e2eMsg{name: "spoof-monitor", file: "spoof", ip: "198.51.100.7", helo: "mx.attacker.example.org", mailFrom: "x@attacker.example.org"}},
		{"tag", e2eMsg{name: "quarantine-tag", file: "quarantine", ip: "198.51.100.8", helo: "h.example", mailFrom: "x@quar.example"}},
		{"hold", e2eMsg{name: "quarantine-hold", file: "quarantine", ip: "198.51.100.8", helo: "h.example", mailFrom: "x@quar.example"}},
		{"tag", e2eMsg{name: "forged-ar-removed", file: "forged-ar", ip: "198.51.100.9", helo: "h.example", mailFrom: "x@monitor.example"}},
		{"tag", e2eMsg{name: "servfail-tempfail", file: "servfail", ip: "198.51.100.10", helo: "h.example", mailFrom: "x@broken.example"}},
		{"accept", e2eMsg{name: "servfail-accept", file: "servfail", ip: "198.51.100.10", helo: "h.example", mailFrom: "x@broken.example"}},
		{"monitor", e2eMsg{name: "null-sender-helo-spf", file: "aligned", sigs: []signSpec{{"esp.example", "sel", "rsa2048"}}, ip: "192.0.2.20", helo: "helo.esp.example", mailFrom: ""}},
		{"tag", e2eMsg{name: "two-author-domains", file: "two-domains", ip: "198.51.100.11", helo: "h.example", mailFrom: "x@attacker.example.org"}},
		{"tag", e2eMsg{name: "no-from-reject", file: "no-from", ip: "198.51.100.12", helo: "h.example", mailFrom: "x@attacker.example.org"}},
		{"accept", e2eMsg{name: "no-from-accept", file: "no-from", ip: "198.51.100.12", helo: "h.example", mailFrom: "x@attacker.example.org"}},
		{"tag", e2eMsg{name: "authenticated-skipped", file: "spoof", ip: "198.51.100.13", helo: "laptop", mailFrom: "ceo@aligned.example", macros: []string{"{auth_authen}", "ceo"}}},
		{"tag", e2eMsg{name: "trusted-network-skipped", file: "spoof", ip: "127.0.0.1", helo: "localhost", mailFrom: "ceo@aligned.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.msg.name, func(t *testing.T) {
			t.Parallel()
			m := tt.msg
			fields, body, err := testcase.SplitMessage(readMessage(t, m.file, m.sigs...))
			if err != nil {
				t.Fatal(err)
			}
			c := dialMilter(t, servers[tt.server].addr)
			act, err := c.connect("client.example", m.ip, m.helo)
			if err != nil {
				t.Fatal(err)
			}
			var o outcome
			if act.Code != 'c' {
				o = final(outcome{}, act)
				o.Header = fields
				o.Submitted = fields
			} else {
				o = c.send(t, envelope{MailFrom: m.mailFrom, Macros: m.macros}, fields, body)
			}
			checkGolden(t, m.name, golden(o))
		})
	}
}

// TestTwoMessagesOneConnection checks that the client IP and HELO survive
// a reject (go-milter drops its backend after a final response; we never
// send one) and that nothing of the first message leaks into the second.
func TestTwoMessagesOneConnection(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	tm := startMilter(t, cfg, loadZone(t, "milter.json"), policy.Options{})
	c := dialMilter(t, tm.addr)
	if _, err := c.connect("mx.aligned.example", "192.0.2.10", "mx.aligned.example"); err != nil {
		t.Fatal(err)
	}
	spoof, sbody, _ := testcase.SplitMessage(readMessage(t, "spoof"))
	good, gbody, _ := testcase.SplitMessage(readMessage(t, "aligned"))

	// 1: From aligned.example, MAIL FROM of another domain: SPF is not
	// aligned, no DKIM: rejected.
	o := c.send(t, envelope{MailFrom: "x@attacker.example.org"}, spoof, sbody)
	if o.SMTP != "reject" || !strings.Contains(o.Reply, "aligned.example") {
		t.Fatalf("first message: %+v", o)
	}
	// 2: same connection, SPF must pass for 192.0.2.10, so DMARC passes;
	// it only can if the connection state survived the reject.
	o = c.send(t, envelope{MailFrom: "bounce@aligned.example"}, good, gbody)
	ar := arValues(o.Header)
	if o.SMTP != "accept" || len(ar) != 1 || !strings.Contains(ar[0], "spf=pass") || !strings.Contains(ar[0], "dmarc=pass") {
		t.Fatalf("second message: %+v\nA-R: %q", o, ar)
	}
	// 3: an aborted transaction, then one more message.
	if _, err := c.s.Mail("bounce@aligned.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.s.Abort(); err != nil {
		t.Fatal(err)
	}
	o = c.send(t, envelope{MailFrom: "bounce@aligned.example"}, good, gbody)
	if ar := arValues(o.Header); o.SMTP != "accept" || len(ar) != 1 || !strings.Contains(ar[0], "dmarc=pass") {
		t.Fatalf("third message: %+v\nA-R: %q", o, ar)
	}
}
