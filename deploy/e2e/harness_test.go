package e2e

import (
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-milter"
)

// stubMilter is a tiny milter that checks the harness itself, apart from
// the daemon: From containing "reject" gets a 550, "hold" is quarantined,
// anything else gets an X-Stub header naming the client it saw.
type stubMilter struct {
	milter.NoOpMilter
	addr, helo string
	from       string
}

func (s *stubMilter) Connect(host, family string, port uint16, addr net.IP, m *milter.Modifier) (milter.Response, error) {
	s.addr = addr.String()
	return milter.RespContinue, nil
}

func (s *stubMilter) Helo(name string, m *milter.Modifier) (milter.Response, error) {
	s.helo = name
	return milter.RespContinue, nil
}

func (s *stubMilter) MailFrom(from string, m *milter.Modifier) (milter.Response, error) {
	s.from = ""
	return milter.RespContinue, nil
}

func (s *stubMilter) Header(name, value string, m *milter.Modifier) (milter.Response, error) {
	if strings.EqualFold(name, "From") {
		s.from = value
	}
	return milter.RespContinue, nil
}

func (s *stubMilter) Headers(h textproto.MIMEHeader, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

func (s *stubMilter) BodyChunk(chunk []byte, m *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}

// Body never answers with a final response: go-milter would then drop the
// backend and the next message on the connection would lose addr and helo.
func (s *stubMilter) Body(m *milter.Modifier) (milter.Response, error) {
	switch {
	case strings.Contains(s.from, "reject"):
		return milter.NewResponseStr('y', "550 5.7.1 stub rejects"), nil
	case strings.Contains(s.from, "hold"):
		if err := m.Quarantine("stub hold"); err != nil {
			return nil, err
		}
	default:
		if err := m.InsertHeader(0, "X-Stub", " addr="+s.addr+" helo="+s.helo); err != nil {
			return nil, err
		}
	}
	return milter.RespContinue, nil
}

// startStubMilter serves stubMilter on a loopback port until the test ends.
func startStubMilter(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &milter.Server{
		NewMilter: func() milter.Milter { return &stubMilter{} },
		Actions:   milter.OptAddHeader | milter.OptChangeHeader | milter.OptQuarantine,
		Protocol:  milter.OptHeaderLeadingSpace,
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = srv.Serve(ln)
	}()
	// go-milter's Close races Serve (LIBRARIES.md): closing the listener
	// ourselves ends Serve without touching the server's fields.
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return "inet:" + ln.Addr().String()
}

// TestPostfixHarness checks the Postfix plumbing with the stub milter, so
// that a failure of TestPostfix can be told apart from a broken harness.
func TestPostfixHarness(t *testing.T) {
	requirePostfix(t)
	pf := startPostfix(t, []smtpdService{{Name: "stub", Milter: startStubMilter(t)}})
	addr := pf.addrs["stub"]

	env := envelope{ClientIP: "192.0.2.77", HELO: "mx.example.net", MailFrom: "a@example.net"}
	c := dialSMTP(t, addr)
	c.hello(env)

	// Two messages on one connection: rejected, then delivered with the
	// client identity the milter saw at connect.
	r := c.send(env, buildMessage("h1", []header{{"From", "reject@example.net"}, {"To", "sink@lab.test"}}, "one\n"))
	if r.Code != 550 || !strings.Contains(r.Text, "stub rejects") {
		t.Errorf("reject: got %v, want 550 from the stub", r)
	}
	r = c.send(env, buildMessage("h2", []header{{"From", "ok@example.net"}, {"To", "sink@lab.test"}}, "two\n"))
	if r.Code != 250 {
		t.Fatalf("second message: got %v, want 250", r)
	}
	c.must(250, "RSET")
	r = c.send(env, buildMessage("h3", []header{{"From", "hold@example.net"}, {"To", "sink@lab.test"}}, "three\n"))
	if r.Code != 250 || r.QueueID() == "" {
		t.Fatalf("hold: got %v, want 250 with a queue ID", r)
	}
	c.quit()

	m, _ := parseDelivered(t, pf.delivered(t, "<h2@"))
	if got, want := m.Header.Get("X-Stub"), "addr=192.0.2.77 helo=mx.example.net"; got != want {
		t.Errorf("X-Stub = %q, want %q", got, want)
	}
	if q := pf.queueName(t, r.QueueID()); q != "hold" {
		t.Errorf("held message %s is in queue %q, want hold", r.QueueID(), q)
	}
	pf.notDelivered(t, "<h1@")
}
