package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/textproto"
	"runtime/debug"
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/auth"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// session is one SMTP connection as the MTA reports it. go-milter creates
// it through Server.NewMilter and would create a fresh one after any final
// response, losing the client IP and HELO (LIBRARIES.md, go-milter): so
// nothing after connect ever answers with a final SimpleResponse.
type session struct {
	srv *Server
	cfg *Config // snapshot taken at connect: a reload never changes a session mid-way
	log *slog.Logger

	// connection state, kept across messages
	clientHost string
	clientIP   net.IP
	helo       string
	connMacros map[string]string // j, {daemon_name}, ... (gone from Modifier.Macros by MAIL)

	msg *message
}

// message is the per-transaction state, reset at MAIL FROM and at ABORT.
type message struct {
	ctx    context.Context
	cancel context.CancelFunc
	start  time.Time

	mailFrom string
	rcpts    []string
	queueID  string
	skip     string // why this message is not evaluated ("" = evaluate)

	spf chan auth.SPFResult

	headerBytes int
	headerOver  bool
	fromValues  []string
	arIndexes   []int // 1-based per-name indexes of A-R fields carrying our authserv-id
	arCount     int

	dkim *auth.DKIMVerifier

	author    auth.AuthorInfo
	authorErr error
	disc      map[string]chan *policy.Discovery
}

func (s *Server) newSession(c *trackedConn) gomilter.Milter {
	cfg := s.currentConfig()
	sess := &session{srv: s, cfg: cfg, log: s.log}
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
	s.resetMessage()
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
	s.resetMessage()
	*err = nil
	*resp = s.failSafe()
}

func (s *session) failSafe() gomilter.Response {
	if s.cfg.OnError == "tempfail" {
		return reply("451 4.3.0 Temporary local problem, try again later")
	}
	return gomilter.RespContinue
}

func (s *session) copyMacros(m *gomilter.Modifier, into map[string]string) {
	for k, v := range m.Macros {
		into[k] = v
	}
}

func (s *session) Connect(host, family string, port uint16, addr net.IP, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("connect", &resp, &err)
	s.clientHost = host
	s.clientIP = addr
	s.connMacros = make(map[string]string)
	s.copyMacros(m, s.connMacros)
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
	s.helo = strings.TrimSpace(name)
	return gomilter.RespContinue, nil
}

func (s *session) MailFrom(from string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("mail", &resp, &err)
	// Postfix sends ABORT between messages, other MTAs may not
	// (LIBRARIES.md): reset here too.
	s.resetMessage()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.MessageTimeout)
	msg := &message{ctx: ctx, cancel: cancel, start: time.Now(), mailFrom: from, disc: map[string]chan *policy.Discovery{}}
	s.msg = msg
	msg.queueID = m.Macros["i"]
	if s.cfg.SkipAuthenticated && m.Macros["{auth_authen}"] != "" {
		msg.skip = "authenticated"
		return gomilter.RespContinue, nil
	}
	// RFC 9989 §4.4 uses only the RFC 5321.MailFrom identity, and for a
	// null reverse path postmaster@<HELO> (RFC 7208 §2.4). Started now so
	// its DNS time overlaps with the transfer of the message.
	msg.spf = make(chan auth.SPFResult, 1)
	ip, helo := s.clientIP, s.helo
	go func() {
		defer func() {
			if v := recover(); v != nil {
				s.log.Error("panic in SPF check", "panic", fmt.Sprint(v))
				msg.spf <- auth.SPFResult{Result: "temperror", Err: fmt.Errorf("internal error: %v", v)}
			}
		}()
		msg.spf <- auth.CheckSPF(ctx, s.srv.deps.Resolver, ip, helo, from)
	}()
	msg.dkim = auth.NewDKIMVerifier(ctx, s.srv.deps.Resolver.LookupTXT, s.cfg.MaxDKIMSignatures)
	return gomilter.RespContinue, nil
}

func (s *session) RcptTo(rcpt string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("rcpt", &resp, &err)
	if s.msg != nil && len(s.msg.rcpts) < 1000 {
		s.msg.rcpts = append(s.msg.rcpts, rcpt)
	}
	return gomilter.RespContinue, nil
}

// Header must answer nil: we negotiate OptNoHeaderReply.
func (s *session) Header(name, value string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer func() {
		if v := recover(); v != nil {
			s.srv.metrics.panic()
			s.log.Error("panic in header callback", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if s.msg != nil {
				s.msg.skip = "internal error"
			}
		}
		resp, err = nil, nil
	}()
	msg := s.msg
	if msg == nil || msg.skip != "" {
		return nil, nil
	}
	if msg.queueID == "" {
		msg.queueID = m.Macros["i"]
	}
	// The per-name index counts every field of that name, kept or not,
	// because the MTA's ChangeHeader index does (RFC-less milter rule).
	isAR := strings.EqualFold(name, "Authentication-Results")
	if isAR {
		msg.arCount++
	}
	msg.headerBytes += len(name) + len(value) + 3
	if msg.headerBytes > s.cfg.MaxHeaderBytes {
		if !msg.headerOver {
			msg.headerOver = true
			s.log.Warn("header exceeds limit; rest not verified", "limit", s.cfg.MaxHeaderBytes, "queue_id", msg.queueID)
		}
		// An A-R with our id must still be removed even past the limit.
		if isAR {
			if id, ok := auth.AuthServID(value); ok && strings.EqualFold(id, s.cfg.AuthServID) {
				msg.arIndexes = append(msg.arIndexes, msg.arCount)
			}
		}
		if strings.EqualFold(name, "From") && len(msg.fromValues) < 50 {
			msg.fromValues = append(msg.fromValues, truncate(value, 8192))
		}
		return nil, nil
	}
	switch {
	case strings.EqualFold(name, "From"):
		if len(msg.fromValues) < 50 {
			msg.fromValues = append(msg.fromValues, value)
		}
	case isAR:
		// RFC 8601 §5: fields claiming our authserv-id that arrive from
		// outside are forgeries and must go.
		if id, ok := auth.AuthServID(value); ok && strings.EqualFold(id, s.cfg.AuthServID) {
			msg.arIndexes = append(msg.arIndexes, msg.arCount)
		}
	}
	msg.dkim.AddHeader(name, value)
	return nil, nil
}

func (s *session) Headers(h textproto.MIMEHeader, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("eoh", &resp, &err)
	msg := s.msg
	if msg == nil || msg.skip != "" {
		return gomilter.RespContinue, nil
	}
	msg.author, msg.authorErr = auth.AuthorDomains(msg.fromValues)
	// Start the DMARC record lookups now so their DNS time overlaps with
	// the body transfer (DESIGN.md).
	for i, d := range msg.author.Domains {
		if i >= maxAuthorDomains {
			break
		}
		ch := make(chan *policy.Discovery, 1)
		msg.disc[d] = ch
		go func(d string) {
			defer func() {
				if v := recover(); v != nil {
					s.log.Error("panic in DMARC discovery", "panic", fmt.Sprint(v))
					ch <- nil
				}
			}()
			ch <- s.srv.deps.Evaluator.Discover(msg.ctx, d)
		}(d)
	}
	msg.dkim.EndHeaders()
	return gomilter.RespContinue, nil
}

// maxAuthorDomains bounds the work one From field can cause.
const maxAuthorDomains = 10

func (s *session) BodyChunk(chunk []byte, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("body", &resp, &err)
	if s.msg != nil && s.msg.skip == "" {
		_, _ = s.msg.dkim.Write(chunk)
	}
	return gomilter.RespContinue, nil
}

func (s *session) Body(m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.guard("eom", &resp, &err)
	msg := s.msg
	if msg == nil {
		return gomilter.RespContinue, nil
	}
	defer s.resetMessage()
	if msg.queueID == "" {
		msg.queueID = m.Macros["i"]
	}
	if msg.skip != "" {
		s.srv.metrics.skipped(msg.skip)
		return gomilter.RespContinue, nil
	}
	d := s.decide(msg)
	return s.act(m, msg, d)
}

func (s *session) Abort(m *gomilter.Modifier) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic in abort", "panic", fmt.Sprint(v))
			err = nil
		}
	}()
	s.resetMessage()
	return nil
}

func (s *session) resetMessage() {
	if s.msg == nil {
		return
	}
	if s.msg.dkim != nil {
		s.msg.dkim.Abort()
	}
	s.msg.cancel()
	s.msg = nil
}

// reply is a custom SMTP reply. go-milter counts it as "continue", so the
// session survives for the next message on this connection (LIBRARIES.md).
// Postfix expands '%' in replies: it is doubled.
func reply(text string) gomilter.Response {
	return gomilter.NewResponseStr('y', strings.ReplaceAll(text, "%", "%%"))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

var errNoDiscovery = errors.New("dmarc discovery did not finish")
