package milter

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// TestShutdownDrainsMessagesNotConnections: on SIGTERM an idle MTA
// connection (Postfix keeps one per SMTP session, idle between messages)
// is closed at once, while a message in flight is answered and only then
// is its connection closed.
func TestShutdownDrainsMessagesNotConnections(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	tm, spoof, sbody := spoofMilter(t, cfg)

	idle := dialMilter(t, tm.addr)
	if _, err := idle.connect("idle.example", "198.51.100.2", "idle.example"); err != nil {
		t.Fatal(err)
	}
	// One message already done on it: idle between messages.
	if o := idle.send(t, envelope{MailFrom: "x@attacker.example.org"}, spoof, sbody); o.SMTP != "reject" {
		t.Fatalf("first message: %+v", o)
	}
	_ = idle.s.Abort() // as Postfix does after every message

	busy := dialMilter(t, tm.addr)
	if _, err := busy.connect("busy.example", "198.51.100.3", "busy.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.s.Mail("x@attacker.example.org", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.s.Rcpt("sink@lab.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range spoof {
		if _, err := busy.s.HeaderField(f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n")); err != nil {
			t.Fatal(err)
		}
	}

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- tm.srv.Shutdown(ctx)
	}()
	deadline := time.Now().Add(2 * time.Second)
	for tm.srv.ActiveSessions() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions open 2s after shutdown began; the idle one should be closed", tm.srv.ActiveSessions())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-stopped:
		t.Fatalf("shutdown returned with a message in flight: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	// The message in flight still gets its answer.
	if _, err := busy.s.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.s.BodyChunk(sbody); err != nil {
		t.Fatal(err)
	}
	_, act, err := busy.s.End()
	if err != nil || act.SMTPCode != 550 {
		t.Fatalf("message in flight: %+v %v", act, err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not return once the message was answered")
	}
	if _, err := busy.s.Mail("y@attacker.example.org", nil); err == nil {
		t.Error("connection still served after shutdown")
	}
}

// TestReloadAppliesPerMessage: Postfix may carry many messages on one
// milter connection; a reload applies from the next MAIL FROM on.
func TestReloadAppliesPerMessage(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	tm, spoof, sbody := spoofMilter(t, cfg)
	c := dialMilter(t, tm.addr)
	if _, err := c.connect("client.example", "198.51.100.4", "client.example"); err != nil {
		t.Fatal(err)
	}
	if o := c.send(t, envelope{MailFrom: "x@attacker.example.org"}, spoof, sbody); o.SMTP != "reject" {
		t.Fatalf("before the reload: %+v", o)
	}
	next := cfg
	next.Mode = "monitor"
	if err := tm.srv.SetConfig(next); err != nil {
		t.Fatal(err)
	}
	if o := c.send(t, envelope{MailFrom: "x@attacker.example.org"}, spoof, sbody); o.SMTP != "accept" {
		t.Fatalf("after the reload, same connection: %+v", o)
	}
}

// TestMetricsShowWhatMonitorHeldBack: in monitor mode a p=reject failure
// is counted with disposition reject and action accept, which is what an
// operator watches before switching to enforce.
func TestMetricsShowWhatMonitorHeldBack(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AuthServID = "lab.test"
	cfg.Mode = "monitor"
	tm, spoof, sbody := spoofMilter(t, cfg)
	c := dialMilter(t, tm.addr)
	if _, err := c.connect("client.example", "198.51.100.5", "client.example"); err != nil {
		t.Fatal(err)
	}
	if o := c.send(t, envelope{MailFrom: "x@attacker.example.org"}, spoof, sbody); o.SMTP != "accept" {
		t.Fatalf("monitor: %+v", o)
	}
	got := tm.srv.Metrics().Decisions()
	if len(got) != 1 || got[[3]string{"fail", "reject", "accept"}] != 1 {
		t.Fatalf("decisions %v, want fail/reject/accept once", got)
	}
}

// spoofMilter starts the milter on the shared zone and reads the spoof of
// the p=reject domain aligned.example.
func spoofMilter(t *testing.T, cfg Config) (*testMilter, []testcase.Field, []byte) {
	t.Helper()
	tm := startMilter(t, cfg, loadZone(t, "milter.json"), policy.Options{})
	spoof, sbody, err := testcase.SplitMessage(readMessage(t, "spoof"))
	if err != nil {
		t.Fatal(err)
	}
	return tm, spoof, sbody
}
