package milter

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"runtime/debug"
	"strings"

	gomilter "github.com/emersion/go-milter"
)

// session is one SMTP connection as the MTA reports it, adapting go-milter
// callbacks to a Transaction per message. go-milter creates it through
// Server.NewMilter and would create a fresh one after any final response,
// losing the client IP and HELO (LIBRARIES.md, go-milter): so nothing
// after connect ever answers with a final SimpleResponse.
type session struct {
	srv *Server
	tc  *trackedConn // nil in tests that drive a session directly
	cfg *Config      // taken at connect and at each MAIL FROM: a reload never changes a message mid-way
	log *slog.Logger

	conn ConnInfo
	// connMacros keeps connect-stage macros (j, {daemon_name}), which
	// go-milter forgets at the next macro packet (LIBRARIES.md).
	connMacros map[string]string

	tx *Transaction
	// faulted marks a message during which one of our callbacks panicked:
	// its end gets the fail-safe answer, whatever is left of it.
	faulted bool
	// connFaulted marks a panic at connect or HELO: the connection data
	// may be incomplete (a missing HELO changes the SPF identity of a null
	// sender), so every message on it gets the fail-safe answer.
	connFaulted bool
}

func (s *Server) newSession(c *trackedConn) gomilter.Milter {
	sess := &session{srv: s, tc: c, cfg: s.currentConfig(), log: s.log}
	if c != nil {
		c.setOnClose(sess.closed)
	}
	return sess
}

// closed runs when the MTA connection ends. go-milter closes the
// connection in the session goroutine after the last callback (Shutdown
// closes only the raw conn, which ends that goroutine's read), so this
// never runs concurrently with a callback.
func (s *session) closed() {
	s.reset()
}

func (s *session) reset() {
	if s.tx != nil {
		s.tx.Abort()
		s.tx = nil
	}
}

// guard turns a panic in one callback into the configured fail-safe answer
// for that message; the daemon and every other session keep going.
func (s *session) guard(stage string, resp *gomilter.Response, err *error) {
	v := recover()
	if v == nil {
		return
	}
	s.srv.metrics.panic()
	s.log.Error("panic in milter callback", "stage", stage, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	s.reset()
	s.faulted = true
	if stage == "connect" || stage == "helo" {
		s.connFaulted = true
	}
	*err = nil
	*resp = s.failSafe()
}

// hook runs the test hook, if any, at the start of each callback (at
// connect, once the client is known).
func (s *session) hook(stage string) {
	if h := s.srv.testHook; h != nil {
		h(stage, s)
	}
}

func (s *session) failSafe() gomilter.Response {
	if s.cfg.OnError == "tempfail" {
		return reply("451 4.3.0 Temporary local problem, try again later")
	}
	return gomilter.RespContinue
}

func (s *session) Connect(host, family string, port uint16, addr net.IP, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("connect", &resp, &err)
	s.conn = ConnInfo{Host: host, IP: addr}
	s.hook("connect")
	s.connMacros = make(map[string]string, len(m.Macros))
	for k, v := range m.Macros {
		s.connMacros[k] = v
	}
	if addr == nil {
		// Local submission (Postfix non_smtpd_milters, Sendmail -bs):
		// there is no client address to check SPF against.
		s.srv.metrics.skipped("local")
		return gomilter.RespAccept, nil
	}
	if ip, ok := netip.AddrFromSlice(addr); ok {
		ip = ip.Unmap()
		for _, p := range s.cfg.TrustedNetworks {
			if p.Contains(ip) {
				// A final accept is safe here: the MTA stops calling us
				// for this whole connection.
				s.srv.metrics.skipped("trusted")
				return gomilter.RespAccept, nil
			}
		}
	}
	return gomilter.RespContinue, nil
}

func (s *session) Helo(name string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("helo", &resp, &err)
	s.hook("helo")
	s.conn.Helo = strings.TrimSpace(name)
	return gomilter.RespContinue, nil
}

func (s *session) MailFrom(from string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("mail", &resp, &err)
	s.hook("mail")
	// Postfix sends ABORT between messages, other MTAs may not
	// (LIBRARIES.md): reset here too.
	s.reset()
	s.faulted = false
	s.tc.beginMessage()
	// A reload applies from the next message on, also on a connection
	// that stays open across many messages.
	s.cfg = s.srv.currentConfig()
	// {auth_authen} arrives with MAIL and is gone by end of message.
	s.tx = s.srv.Begin(s.cfg, s.conn, from, m.Macros["{auth_authen}"])
	s.tx.QueueID = queueID(m)
	return gomilter.RespContinue, nil
}

func (s *session) RcptTo(rcpt string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("rcpt", &resp, &err)
	if s.faulted {
		// The rest of a faulted message is not looked at: the fault
		// would most likely recur.
		return gomilter.RespContinue, nil
	}
	s.hook("rcpt")
	if s.tx != nil {
		if r := s.tx.AddRcpt(rcpt); r != "" {
			// A custom reply is not final: the session and the other
			// recipients go on (LIBRARIES.md, go-milter).
			return reply(r), nil
		}
	}
	return gomilter.RespContinue, nil
}

// Header must answer nil: we negotiate OptNoHeaderReply.
func (s *session) Header(name, value string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer func() {
		if v := recover(); v != nil {
			s.srv.metrics.panic()
			s.log.Error("panic in header callback", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			// No reply is possible here (OptNoHeaderReply): the fail-safe
			// answer waits for the end of the message.
			s.reset()
			s.faulted = true
		}
		resp, err = nil, nil
	}()
	// go-milter also collects every header field in its own map for
	// Headers(), and empties it only at ABORT: unbounded for a peer that
	// sends endless fields or no ABORT between messages. We keep our own
	// ordered copy (LIBRARIES.md), so drop the library's as we go; the
	// Modifier shares the session's map.
	clear(m.Headers)
	if s.faulted {
		return nil, nil
	}
	s.hook("header")
	if s.tx == nil {
		return nil, nil
	}
	if s.tx.QueueID == "" {
		s.tx.QueueID = queueID(m)
	}
	s.tx.AddHeader(name, value)
	return nil, nil
}

func (s *session) Headers(h textproto.MIMEHeader, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("eoh", &resp, &err)
	if s.faulted {
		// The rest of a faulted message is not looked at: the fault
		// would most likely recur.
		return gomilter.RespContinue, nil
	}
	s.hook("eoh")
	if s.tx != nil {
		s.tx.EndHeaders()
	}
	return gomilter.RespContinue, nil
}

func (s *session) BodyChunk(chunk []byte, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("body", &resp, &err)
	if s.faulted {
		// The rest of a faulted message is not looked at: the fault
		// would most likely recur.
		return gomilter.RespContinue, nil
	}
	s.hook("body")
	if s.tx != nil {
		s.tx.WriteBody(chunk)
	}
	return gomilter.RespContinue, nil
}

func (s *session) Body(m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.tc.endMessage(true)
	defer s.guard("eom", &resp, &err)
	s.hook("eom")
	if s.faulted || s.connFaulted {
		s.faulted = false
		s.reset()
		return s.failSafe(), nil
	}
	tx := s.tx
	if tx == nil {
		return gomilter.RespContinue, nil
	}
	s.tx = nil
	if tx.QueueID == "" {
		tx.QueueID = queueID(m)
	}
	if d := tx.Finish(); d != nil {
		resp, err = s.act(m, d)
	} else {
		// Not evaluated, but forged A-R fields with our id still go.
		resp, err = gomilter.RespContinue, removeAR(m, tx.ForgedAR())
	}
	if err != nil {
		s.srv.metrics.MTAWriteErrors.Add(1)
		s.log.Warn("could not send the decision to the MTA", "queue_id", tx.QueueID, "err", err)
	}
	return resp, err
}

// removeAR deletes the A-R fields at the 1-based indexes idx, from the
// highest index down: each deletion shifts the indexes of the fields
// below it (go-milter #31, OpenDKIM CVE-2022-48521).
func removeAR(m *gomilter.Modifier, idx []int) error {
	for i := len(idx) - 1; i >= 0; i-- {
		if err := m.ChangeHeader(idx[i], "Authentication-Results", ""); err != nil {
			return err
		}
	}
	return nil
}

// act sends the decision to the MTA. Nothing here returns a final
// SimpleResponse (LIBRARIES.md, go-milter).
func (s *session) act(m *gomilter.Modifier, d *Decision) (gomilter.Response, error) {
	switch d.Action {
	case ActionReject, ActionTempfail:
		// Header changes would be thrown away with the message.
		return reply(d.Reply), nil
	}
	if err := removeAR(m, d.RemoveAR); err != nil {
		return nil, err
	}
	// RFC 8601 §5: ours goes on top, above anything it vouches for.
	if err := m.InsertHeader(0, "Authentication-Results", d.AuthResults); err != nil {
		return nil, err
	}
	if d.Action == ActionQuarantine {
		if d.TagHeader[0] != "" {
			if err := m.AddHeader(d.TagHeader[0], d.TagHeader[1]); err != nil {
				return nil, err
			}
		} else if err := m.Quarantine("DMARC policy quarantine for " + d.Domain); err != nil {
			return nil, err
		}
	}
	return gomilter.RespContinue, nil
}

func (s *session) Abort(m *gomilter.Modifier) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.srv.metrics.panic()
			s.log.Error("panic in abort", "panic", fmt.Sprint(v))
			err = nil
		}
	}()
	s.reset()
	s.faulted = false
	s.tc.endMessage(false)
	return nil
}

// reply is a custom SMTP reply. go-milter counts it as "continue", so the
// session survives for the next message on this connection (LIBRARIES.md).
// Postfix expands '%' in replies: it is doubled.
func reply(text string) gomilter.Response {
	return gomilter.NewResponseStr('y', strings.ReplaceAll(text, "%", "%%"))
}

// queueID is the MTA's queue id (macro i), bounded: it goes into every log
// line of the message, and a peer can send a megabyte of anything there.
// Postfix ids are at most a few dozen alphanumerics.
func queueID(m *gomilter.Modifier) string {
	id := m.Macros["i"]
	if len(id) > 64 {
		id = id[:64]
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] >= 0x7f {
			return ""
		}
	}
	return id
}
