package milter

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// testMilter is a milter server on 127.0.0.1:0 resolving through an
// in-process DNS server.
type testMilter struct {
	addr string
	srv  *Server
	dns  *dnstest.Server
	res  *dnsres.Resolver
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() || os.Getenv("DMARC_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startMilter(t testing.TB, cfg Config, zone *dnstest.Zone, opts policy.Options) *testMilter {
	t.Helper()
	return startMilterLogged(t, cfg, zone, opts, testLogger(t))
}

// startMilterLogged is startMilter with the server's logger given.
func startMilterLogged(t testing.TB, cfg Config, zone *dnstest.Zone, opts policy.Options, logger *slog.Logger) *testMilter {
	t.Helper()
	dsrv, err := dnstest.Start(zone)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dsrv.Close() })
	res, err := dnsres.New(dnsres.Config{Servers: []string{dsrv.Addr()}, Timeout: 500 * time.Millisecond, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, Deps{Resolver: res, Evaluator: policy.NewEvaluator(res, opts), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &testMilter{addr: ln.Addr().String(), srv: srv, dns: dsrv, res: res}
}

// mtaConn is one SMTP connection as an MTA would present it to the milter.
type mtaConn struct {
	s *gomilter.ClientSession
}

func dialMilter(t testing.TB, addr string) *mtaConn {
	t.Helper()
	// The bundled client only talks to the bundled server with masks
	// inside the v2 range (LIBRARIES.md).
	c := gomilter.NewClientWithOptions("tcp", addr, gomilter.ClientOptions{
		ReadTimeout:  30 * time.Second,
		WriteTimeout: 30 * time.Second,
		ActionMask:   gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
	})
	s, err := c.Session()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &mtaConn{s: s}
}

func (c *mtaConn) connect(host, ip, helo string) (*gomilter.Action, error) {
	fam := gomilter.FamilyInet
	if strings.Contains(ip, ":") {
		fam = gomilter.FamilyInet6
	}
	act, err := c.s.Conn(host, fam, 25, ip)
	if err != nil || act.Code != gomilter.ActContinue {
		return act, err
	}
	return c.s.Helo(helo)
}

// envelope is what the MTA tells the milter before the header.
type envelope struct {
	MailFrom string
	Rcpt     []string
	Macros   []string // sent with MAIL, e.g. {auth_authen}
}

// outcome of one message, in the acceptance cases' words.
type outcome = testcase.Outcome

// send runs one transaction and applies the milter's modifications to
// the header the way an MTA does.
func (c *mtaConn) send(t testing.TB, env envelope, fields []testcase.Field, body []byte) outcome {
	t.Helper()
	o, err := c.trySend(env, fields, body)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func (c *mtaConn) trySend(env envelope, fields []testcase.Field, body []byte) (outcome, error) {
	o := outcome{Submitted: fields}
	if len(env.Macros) > 0 {
		if err := c.s.Macros(gomilter.CodeMail, env.Macros...); err != nil {
			return o, err
		}
	}
	act, err := c.s.Mail(env.MailFrom, nil)
	if err != nil {
		return o, err
	}
	if act.Code != gomilter.ActContinue {
		return final(o, act), nil
	}
	rcpts := env.Rcpt
	if len(rcpts) == 0 {
		rcpts = []string{"sink@lab.test"}
	}
	// Like an MTA: a refused recipient is dropped and the others go on;
	// with none left, the refusal is the transaction's.
	var last *gomilter.Action
	for _, r := range rcpts {
		if act, err = c.s.Rcpt(r, nil); err != nil {
			return o, err
		}
		if act.Code != gomilter.ActContinue {
			o.Deferred, last = append(o.Deferred, r), act
		}
	}
	if len(o.Deferred) == len(rcpts) {
		o.Deferred = nil
		return final(o, last), nil
	}
	for _, f := range fields {
		// Postfix sends folded lines with LF only (LIBRARIES.md).
		if act, err = c.s.HeaderField(f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n")); err != nil {
			return o, err
		}
		if act.Code != gomilter.ActContinue {
			return final(o, act), nil
		}
	}
	if act, err = c.s.HeaderEnd(); err != nil {
		return o, err
	}
	if act.Code != gomilter.ActContinue {
		return final(o, act), nil
	}
	for len(body) > 0 {
		n := min(len(body), gomilter.MaxBodyChunk)
		if act, err = c.s.BodyChunk(body[:n]); err != nil {
			return o, err
		}
		body = body[n:]
		if act.Code != gomilter.ActContinue {
			return final(o, act), nil
		}
	}
	mods, act, err := c.s.End()
	if err != nil {
		return o, err
	}
	o = final(o, act)
	if o.SMTP != "accept" {
		return o, nil
	}
	hdr := append([]testcase.Field(nil), fields...)
	for _, m := range mods {
		switch m.Code {
		case gomilter.ActQuarantine:
			o.Queue = "hold"
		case gomilter.ActInsertHeader:
			i := min(int(m.HeaderIndex), len(hdr))
			hdr = append(hdr[:i], append([]testcase.Field{{Name: m.HeaderName, Value: m.HeaderValue}}, hdr[i:]...)...)
		case gomilter.ActAddHeader:
			hdr = append(hdr, testcase.Field{Name: m.HeaderName, Value: m.HeaderValue})
		case gomilter.ActChangeHeader:
			n := 0
			for j := range hdr {
				if strings.EqualFold(hdr[j].Name, m.HeaderName) {
					n++
					if n == int(m.HeaderIndex) {
						if m.HeaderValue == "" {
							hdr = append(hdr[:j], hdr[j+1:]...)
						} else {
							hdr[j].Value = m.HeaderValue
						}
						break
					}
				}
			}
		}
	}
	o.Header = hdr
	return o, nil
}

func final(o outcome, act *gomilter.Action) outcome {
	switch act.Code {
	case gomilter.ActContinue, gomilter.ActAccept:
		o.SMTP, o.Queue = "accept", "delivered"
	case gomilter.ActDiscard:
		o.SMTP, o.Queue = "accept", "discarded"
	case gomilter.ActReject:
		o.SMTP, o.Queue, o.Reply = "reject", "none", "550 5.7.1 Command rejected"
	case gomilter.ActTempFail:
		o.SMTP, o.Queue, o.Reply = "tempfail", "none", "451 4.7.1 Service unavailable"
	case gomilter.ActReplyCode:
		o.Reply = fmt.Sprintf("%d %s", act.SMTPCode, act.SMTPText)
		if act.SMTPCode >= 500 {
			o.SMTP, o.Queue = "reject", "none"
		} else if act.SMTPCode >= 400 {
			o.SMTP, o.Queue = "tempfail", "none"
		} else {
			o.SMTP, o.Queue = "accept", "delivered"
		}
	default:
		o.SMTP, o.Queue = "unknown:"+string(rune(act.Code)), "none"
	}
	return o
}

// arValues returns the Authentication-Results values in a delivered header.
func arValues(h []testcase.Field) []string {
	var out []string
	for _, f := range h {
		if strings.EqualFold(f.Name, "Authentication-Results") {
			out = append(out, f.Value)
		}
	}
	return out
}
