package e2e

import "testing"

// TestPostfixUnknownCommand sends an unknown SMTP command before a spoofed
// message. go-milter v0.5.0 closes the session on SMFIC_UNKNOWN (as
// miltertest shows); Postfix sends that command only to milters of
// protocol version 3 and up, and go-milter negotiates version 2
// (LIBRARIES.md). Should either change, the milter would drop out for the
// rest of the SMTP session and, with milter_default_action=accept, every
// later message would bypass it: this catches that.
func TestPostfixUnknownCommand(t *testing.T) {
	requirePostfix(t)
	bin := daemonBinary(t)
	dnsAddr := startDNS(t)
	d := startDaemon(t, bin, "unknown", "-dns", dnsAddr, "-authserv-id", authservID,
		"-trusted-networks", "", "-mode", "enforce", "-quarantine", "hold", "-spec", "rfc9989")
	pf := startPostfix(t, []smtpdService{{"unknown", d.milter}})

	env := attacker(208)
	c := dialSMTP(t, pf.addrs["unknown"])
	c.hello(env)
	if code, text := c.cmd("XYZZY frobnicate"); code/100 != 5 {
		t.Fatalf("unknown command: got %d %s, want a 5xx from Postfix", code, text)
	}
	marker := "e2e-unknown-cmd"
	msg := buildMessage(marker, []header{{"From", "CEO <ceo@e2e-reject.test>"}, {"To", "sink@lab.test"}, {"Subject", "after XYZZY"}}, "body\n")
	r := c.send(env, msg)
	c.quit()
	checkOutcome(t, pf, marker, r, want{code: 550, status: "5.7.1", outcome: refused,
		textHas: "Email rejected per DMARC policy for e2e-reject.test"})
}
