package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"
)

// SMTP mode: instead of speaking milter, the load goes to an MTA (a
// Postfix smtpd with the milters under test in smtpd_milters), so the
// MTA's own milter client is part of what is measured. Postfix's XCLIENT
// extension claims each corpus client's address, name and HELO; the
// server must list us in smtpd_authorized_xclient_hosts.

type smtpConn struct {
	conn    net.Conn
	tp      *textproto.Conn
	timeout time.Duration
}

func (c *smtpConn) read() (int, string, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	return c.tp.ReadResponse(0)
}

func (c *smtpConn) cmd(format string, args ...any) (int, string, error) {
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	if err := c.tp.PrintfLine(format, args...); err != nil {
		return 0, "", err
	}
	code, text, err := c.read()
	if err != nil && code == 0 {
		return 0, "", err
	}
	// textproto reports a reply of another class as an error with the
	// code set; the caller judges the code.
	return code, text, nil
}

func (c *smtpConn) must(want int, format string, args ...any) error {
	code, text, err := c.cmd(format, args...)
	if err != nil {
		return err
	}
	if code != want {
		return fmt.Errorf("%s: %d %s", strings.Fields(format)[0], code, text)
	}
	return nil
}

// xtext encodes an XCLIENT attribute (Postfix XCLIENT_README, the xtext
// of RFC 3461 §4).
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

func dialSMTP(addr string, cl *Client, timeout time.Duration) (*smtpConn, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c := &smtpConn{conn: conn, tp: textproto.NewConn(conn), timeout: timeout}
	if code, text, err := c.read(); err != nil || code != 220 {
		conn.Close()
		return nil, fmt.Errorf("greeting: %d %s %v", code, text, err)
	}
	// XCLIENT resets the session, so EHLO again under the claimed name.
	for _, step := range []struct {
		want int
		cmd  string
	}{
		{250, "EHLO load.bench"},
		{220, fmt.Sprintf("XCLIENT ADDR=%s NAME=%s HELO=%s", cl.IP, xtext(cl.Host), xtext(cl.Helo))},
		{250, "EHLO " + cl.Helo},
	} {
		if err := c.must(step.want, "%s", step.cmd); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return c, nil
}

// smtpMessage runs one mail transaction and returns the action the
// client sees: accept, reject or tempfail (a quarantine is not visible
// over SMTP).
func (c *smtpConn) message(m *Message) (string, error) {
	classify := func(code int) string {
		switch code / 100 {
		case 2, 3:
			return "accept"
		case 4:
			return "tempfail"
		}
		return "reject"
	}
	code, _, err := c.cmd("MAIL FROM:<%s>", m.MailFrom)
	if err != nil || code != 250 {
		return classify(code), err
	}
	for _, r := range m.Rcpt {
		if code, _, err = c.cmd("RCPT TO:<%s>", r); err != nil || code != 250 {
			return classify(code), err
		}
	}
	if code, _, err = c.cmd("DATA"); err != nil || code != 354 {
		return classify(code), err
	}
	var msg bytes.Buffer
	for _, f := range m.Fields {
		msg.WriteString(f.Name + ":" + f.Value + "\r\n")
	}
	msg.WriteString("\r\n")
	msg.Write(m.Body)
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	w := c.tp.DotWriter()
	// DotWriter stuffs dots and keeps CRLF line ends as they are.
	if _, err := w.Write(msg.Bytes()); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	code, _, err = c.read()
	if code == 0 {
		return "", err
	}
	return classify(code), nil
}

func (c *smtpConn) close() {
	_, _, _ = c.cmd("QUIT")
	c.conn.Close()
}

// smtpConnection is connection for SMTP mode.
func (r *runner) smtpConnection(ctx context.Context, cl *Client, seed int) (bool, error) {
	if !r.take(ctx) {
		return false, nil
	}
	r.mu.Lock()
	r.rep.Conns++
	r.mu.Unlock()
	c, err := dialSMTP(r.opts.SMTP, cl, r.opts.Timeout)
	if err != nil {
		return true, fmt.Errorf("smtp %s: %w", r.opts.SMTP, err)
	}
	defer c.close()
	for n := 0; n < r.opts.PerConn; n++ {
		if n > 0 && !r.take(ctx) {
			return false, nil
		}
		m := cl.Msgs[(seed+n)%len(cl.Msgs)]
		start := time.Now()
		action, err := c.message(m)
		if err != nil {
			return true, fmt.Errorf("%s: %w", m.Name, err)
		}
		want := m.Expect
		if want == "quarantine" {
			// Held or tagged, the SMTP client sees 250 either way.
			want = "accept"
		}
		r.record(m, action, want, time.Since(start))
	}
	return true, nil
}
