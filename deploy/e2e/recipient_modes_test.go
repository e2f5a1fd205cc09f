package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRecipientModesThroughPostfix: one milter reply covers a whole
// message, so the daemon defers (452 4.5.3 at RCPT) a recipient whose
// domain has another mode than the first one. Through a real Postfix:
// the deferred recipient alone is refused, the transaction goes on for
// the others (here: a spoof of p=reject, rejected), and the deferred one
// sent again on its own is delivered unevaluated, forged A-R removed.
// (Named apart from TestPostfix*, which CI reruns with the installed
// config: this one brings its own.)
func TestRecipientModesThroughPostfix(t *testing.T) {
	requirePostfix(t)
	bin := daemonBinary(t)
	dnsAddr := startDNS(t)
	conf := filepath.Join(t.TempDir(), "modes.toml")
	if err := os.WriteFile(conf, []byte("[local_policy]\nrecipient_domains = { \"optout.lab.test\" = \"off\" }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, bin, "modes", "-config", conf, "-dns", dnsAddr, "-authserv-id", authservID,
		"-trusted-networks", "", "-mode", "enforce", "-spec", "rfc9989")
	pf := startPostfix(t, []smtpdService{{"modes", d.milter}})

	spoof := func(marker string) []byte {
		return buildMessage(marker, []header{
			{"Authentication-Results", "lab.test; dmarc=pass header.from=e2e-reject.test"},
			{"From", "CEO <ceo@e2e-reject.test>"}, {"To", "sink@lab.test"}, {"Subject", "wire money"},
		}, "Test message body.\n")
	}
	env := attacker(210)
	c := dialSMTP(t, pf.addrs["modes"])
	c.hello(env)
	c.must(250, "MAIL FROM:<%s>", env.MailFrom)
	c.must(250, "RCPT TO:<sink@lab.test>")
	if code, text := c.cmd("RCPT TO:<someone@optout.lab.test>"); code != 452 || !strings.HasPrefix(text, "4.5.3") {
		t.Fatalf("recipient in another mode: %d %s, want 452 4.5.3", code, text)
	}
	c.must(354, "DATA")
	w := c.tp.DotWriter()
	_, _ = w.Write([]byte(strings.ReplaceAll(string(spoof("modes-enforced")), "\r\n", "\n")))
	_ = w.Close()
	if code, text := c.read(); code != 550 {
		t.Fatalf("the enforcing recipient's transaction: %d %s, want 550", code, text)
	}
	// The sender's retry of the deferred recipient, alone.
	r := c.send(envelope{MailFrom: env.MailFrom, Rcpt: []string{"someone@optout.lab.test"}}, spoof("modes-off"))
	c.quit()
	if r.Code != 250 {
		t.Fatalf("deferred recipient sent again: %v, want 250", r)
	}
	raw := pf.delivered(t, "modes-off")
	if strings.Contains(string(raw), "lab.test; dmarc=pass") {
		t.Errorf("forged A-R with our id delivered:\n%s", raw)
	}
	pf.notDelivered(t, "modes-enforced")
}
