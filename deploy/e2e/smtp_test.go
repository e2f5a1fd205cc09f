package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"testing"
	"time"
)

// envelope is what one message claims at the SMTP level.
type envelope struct {
	ClientIP   string // claimed with XCLIENT ADDR
	ClientName string // claimed with XCLIENT NAME; default: HELO
	HELO       string
	MailFrom   string // without angle brackets; "" is the null reverse-path
	Rcpt       []string
}

// reply is the SMTP reply that decided a transaction: the first non-2xx/3xx
// reply, or the reply after the final dot.
type reply struct {
	Stage string // MAIL, RCPT, DATA or EOM
	Code  int
	Text  string
}

func (r reply) String() string { return fmt.Sprintf("%s: %d %s", r.Stage, r.Code, r.Text) }

// queueIDRe matches Postfix's "250 2.0.0 Ok: queued as 4Xb1Yz0abc".
var queueIDRe = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)

// QueueID is the Postfix queue ID of an accepted message, or "".
func (r reply) QueueID() string {
	if m := queueIDRe.FindStringSubmatch(r.Text); m != nil {
		return m[1]
	}
	return ""
}

// smtpClient is a minimal SMTP client that can say XCLIENT, which net/smtp
// cannot.
type smtpClient struct {
	t    *testing.T
	conn net.Conn
	tp   *textproto.Conn
}

func dialSMTP(t *testing.T, addr string) *smtpClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := &smtpClient{t: t, conn: conn, tp: textproto.NewConn(conn)}
	t.Cleanup(func() { c.tp.Close() })
	if code, text := c.read(); code != 220 {
		t.Fatalf("greeting from %s: %d %s", addr, code, text)
	}
	return c
}

func (c *smtpClient) read() (int, string) {
	c.t.Helper()
	// Longer than the milter's own DNS deadline, shorter than the test's
	// patience: a stuck milter or Postfix fails the test instead of hanging.
	_ = c.conn.SetReadDeadline(time.Now().Add(45 * time.Second))
	code, text, err := c.tp.ReadResponse(0)
	if err != nil {
		c.t.Fatalf("reading SMTP reply: %v", err)
	}
	return code, text
}

// cmd sends one command line and returns the reply.
func (c *smtpClient) cmd(format string, args ...any) (int, string) {
	c.t.Helper()
	if err := c.tp.PrintfLine(format, args...); err != nil {
		c.t.Fatalf("sending %q: %v", fmt.Sprintf(format, args...), err)
	}
	return c.read()
}

// must sends a command that has to succeed with want.
func (c *smtpClient) must(want int, format string, args ...any) string {
	c.t.Helper()
	code, text := c.cmd(format, args...)
	if code != want {
		c.t.Fatalf("%s: got %d %s, want %d", fmt.Sprintf(format, args...), code, text, want)
	}
	return text
}

// hello claims the client identity of env (RFC-less Postfix XCLIENT
// extension) and greets again, as XCLIENT resets the session.
func (c *smtpClient) hello(env envelope) {
	c.t.Helper()
	name := env.ClientName
	if name == "" {
		name = env.HELO
	}
	ehlo := c.must(250, "EHLO client.lab.test")
	if !strings.Contains(ehlo, "XCLIENT") {
		c.t.Fatalf("server does not offer XCLIENT to us:\n%s", ehlo)
	}
	c.must(220, "XCLIENT ADDR=%s NAME=%s HELO=%s", env.ClientIP, xtext(name), xtext(env.HELO))
	c.must(250, "EHLO %s", env.HELO)
}

// send runs one mail transaction and returns the deciding reply.
func (c *smtpClient) send(env envelope, msg []byte) reply {
	c.t.Helper()
	if code, text := c.cmd("MAIL FROM:<%s>", env.MailFrom); code/100 != 2 {
		return reply{"MAIL", code, text}
	}
	rcpts := env.Rcpt
	if len(rcpts) == 0 {
		rcpts = []string{"sink@lab.test"}
	}
	for _, r := range rcpts {
		if code, text := c.cmd("RCPT TO:<%s>", r); code/100 != 2 {
			return reply{"RCPT", code, text}
		}
	}
	if code, text := c.cmd("DATA"); code != 354 {
		return reply{"DATA", code, text}
	}
	w := c.tp.DotWriter()
	if _, err := w.Write(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))); err != nil {
		c.t.Fatalf("writing message: %v", err)
	}
	if err := w.Close(); err != nil {
		c.t.Fatalf("ending message: %v", err)
	}
	code, text := c.read()
	return reply{"EOM", code, text}
}

func (c *smtpClient) quit() {
	c.t.Helper()
	c.cmd("QUIT")
}

// xtext encodes an XCLIENT attribute value (Postfix XCLIENT_README: xtext
// as in RFC 3461 §4).
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < '!' || ch > '~' || ch == '+' || ch == '=' {
			fmt.Fprintf(&b, "+%02X", ch)
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}
