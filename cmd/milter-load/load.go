package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// Target is one milter socket.
type Target struct {
	Network, Address string
}

func (t Target) String() string { return t.Network + ":" + t.Address }

// ParseTarget reads the Postfix and Sendmail spellings of a milter
// socket: inet:HOST:PORT, inet:PORT@HOST, unix:/path, local:/path; a bare
// HOST:PORT is TCP.
func ParseTarget(s string) (Target, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Target{}, fmt.Errorf("milter address %q: want inet:HOST:PORT or unix:/path", s)
	}
	switch kind {
	case "unix", "local":
		if rest == "" {
			return Target{}, fmt.Errorf("milter address %q: empty path", s)
		}
		return Target{"unix", rest}, nil
	case "inet", "inet6", "tcp":
		if port, host, ok := strings.Cut(rest, "@"); ok {
			rest = net.JoinHostPort(host, port)
		}
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return Target{}, fmt.Errorf("milter address %q: %w", s, err)
		}
		return Target{"tcp", rest}, nil
	}
	if _, port, err := net.SplitHostPort(s); err == nil {
		if _, err := strconv.ParseUint(port, 10, 16); err == nil {
			return Target{"tcp", s}, nil
		}
	}
	return Target{}, fmt.Errorf("milter address %q: unknown socket type %q", s, kind)
}

// Options of one load run.
type Options struct {
	// Chain is the milters every message passes through, in order, as
	// Postfix's smtpd_milters does: each one sees the header with the
	// changes of those before it, and the first non-continue answer ends
	// the message.
	Chain []Target
	// SMTP, instead of Chain, is an MTA's HOST:PORT that runs the milters
	// (SMTP mode, smtp.go).
	SMTP string
	// Conns is the number of concurrent milter connections (SMTP
	// sessions); PerConn the messages each sends before reconnecting.
	Conns, PerConn int
	// The run stops after Count messages (0: no limit) or after
	// Duration (0: no limit); one of them must be set.
	Count    int
	Duration time.Duration
	Corpus   []*Client
	// Timeout bounds each read and write.
	Timeout time.Duration
	// CountIO wraps the connections to count reads, writes, bytes and
	// packets.
	CountIO bool
	// Trace, when set, gets the outcome and the header fields the chain
	// added or changed, for the first TraceN messages: to see why a
	// milter answers as it does.
	Trace  io.Writer
	TraceN int
}

// Report is the outcome of a run.
type Report struct {
	Messages  int64
	Conns     int64
	Elapsed   time.Duration
	Latencies []time.Duration // per message, MAIL to end-of-message reply, sorted
	Actions   map[string]int64
	// Unexpected counts messages whose action differs from the corpus'
	// expectation, by "message: got X, want Y".
	Unexpected map[string]int64
	Errors     int64
	ErrorLog   []string // the first few errors
	IO         []IOSnapshot
}

// Rate is messages per second.
func (r *Report) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Messages) / r.Elapsed.Seconds()
}

// Percentile returns the q-quantile (0 < q <= 1) of the latencies, by
// nearest rank.
func (r *Report) Percentile(q float64) time.Duration {
	n := len(r.Latencies)
	if n == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(n))) - 1
	return r.Latencies[min(max(i, 0), n-1)]
}

const maxErrorLog = 10

// run state shared by the workers.
type runner struct {
	opts Options
	io   []*IOStats
	// protoMasks is what each milter of the chain is offered; see dial.
	protoMasks []atomic.Uint32

	tickets  atomic.Int64 // messages started
	traced   atomic.Int64
	msgSeq   atomic.Int64
	deadline time.Time

	mu         sync.Mutex
	rep        Report
	latencies  []time.Duration
	actions    map[string]int64
	unexpected map[string]int64
}

// The masks Postfix offers, minus skip (go-milter's client cannot take a
// skip reply) and RCPT_REJ. Milters speaking protocol 6 (libmilter:
// OpenDKIM, OpenDMARC) need HDR_LEADSPC and the no-reply flags offered
// to use them; go-milter's server speaks version 2, and go-milter's client
// refuses to downgrade unless the masks fit in version 2 (LIBRARIES.md),
// so dial falls back to v2Proto for it.
const (
	actionMask = gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine |
		gomilter.OptChangeBody | gomilter.OptAddRcpt | gomilter.OptRemoveRcpt
	v6Proto = gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoMailFrom | gomilter.OptNoRcptTo |
		gomilter.OptNoBody | gomilter.OptNoHeaders | gomilter.OptNoEOH | gomilter.OptNoHeaderReply |
		gomilter.OptNoUnknown | gomilter.OptNoData | gomilter.OptNoConnReply | gomilter.OptNoHeloReply |
		gomilter.OptNoMailReply | gomilter.OptNoRcptReply | gomilter.OptNoEOHReply |
		gomilter.OptNoBodyReply | gomilter.OptHeaderLeadingSpace
	v2Proto = v6Proto & 0x7f
)

// Run drives the load and returns the report. ctx cancels it early.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if (len(opts.Chain) == 0) == (opts.SMTP == "") {
		return nil, errors.New("give milters or an SMTP server to test, not both")
	}
	if opts.Count <= 0 && opts.Duration <= 0 {
		return nil, errors.New("set a message count or a duration")
	}
	if len(opts.Corpus) == 0 {
		return nil, errors.New("empty corpus")
	}
	for _, c := range opts.Corpus {
		if len(c.Msgs) == 0 || net.ParseIP(c.IP) == nil {
			return nil, fmt.Errorf("corpus client %q: needs messages and an IP address", c.Name)
		}
	}
	opts.Conns = max(opts.Conns, 1)
	opts.PerConn = max(opts.PerConn, 1)
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	r := &runner{opts: opts, actions: map[string]int64{}, unexpected: map[string]int64{}}
	r.protoMasks = make([]atomic.Uint32, len(opts.Chain))
	for i := range opts.Chain {
		r.io = append(r.io, &IOStats{})
		r.protoMasks[i].Store(uint32(v6Proto))
		// One probe per milter before the load: it fails fast on a
		// wrong address and settles the protocol mask once.
		s, err := r.dial(i)
		if err != nil {
			return nil, err
		}
		if opts.Trace != nil {
			fmt.Fprintf(opts.Trace, "%s negotiated actions %#x, protocol %#x\n", opts.Chain[i], uint32(s.ActionOpts), uint32(s.ProtocolOpts))
		}
		s.Close()
	}
	if opts.CountIO {
		// The probes are not part of the load.
		for i := range r.io {
			r.io[i] = &IOStats{}
		}
	}
	if opts.SMTP != "" {
		// Fail fast on a wrong address or a server refusing XCLIENT.
		c, err := dialSMTP(opts.SMTP, opts.Corpus[0], opts.Timeout)
		if err != nil {
			return nil, fmt.Errorf("smtp %s: %w", opts.SMTP, err)
		}
		c.close()
	}
	start := time.Now()
	if opts.Duration > 0 {
		r.deadline = start.Add(opts.Duration)
	}
	var wg sync.WaitGroup
	for w := 0; w < opts.Conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r.worker(ctx, w)
		}(w)
	}
	wg.Wait()
	rep := r.rep
	rep.Elapsed = time.Since(start)
	rep.Latencies = r.latencies
	sort.Slice(rep.Latencies, func(i, j int) bool { return rep.Latencies[i] < rep.Latencies[j] })
	rep.Messages = int64(len(rep.Latencies))
	rep.Actions, rep.Unexpected = r.actions, r.unexpected
	for _, st := range r.io {
		rep.IO = append(rep.IO, st.snapshot())
	}
	return &rep, nil
}

// take reserves the next message; false when the run is over.
func (r *runner) take(ctx context.Context) bool {
	if ctx.Err() != nil || (!r.deadline.IsZero() && time.Now().After(r.deadline)) {
		return false
	}
	n := r.tickets.Add(1)
	return r.opts.Count <= 0 || n <= int64(r.opts.Count)
}

func (r *runner) fail(err error) {
	r.mu.Lock()
	r.rep.Errors++
	if len(r.rep.ErrorLog) < maxErrorLog {
		r.rep.ErrorLog = append(r.rep.ErrorLog, err.Error())
	}
	r.mu.Unlock()
}

// worker is one MTA process: it opens a connection per client in turn
// and sends PerConn messages on each.
func (r *runner) worker(ctx context.Context, w int) {
	for conn := 0; ; conn++ {
		// Each worker takes the clients in turn, from a different
		// starting point, so every client is served all the time.
		cl := r.opts.Corpus[(w+conn)%len(r.opts.Corpus)]
		connection := r.connection
		if r.opts.SMTP != "" {
			connection = r.smtpConnection
		}
		more, err := connection(ctx, cl, w+conn)
		if err != nil {
			r.fail(err)
			// A milter that is down must not turn the run into a
			// busy loop of dials.
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		if !more {
			return
		}
	}
}

// chainSession is one SMTP connection's sessions with every milter of
// the chain.
type chainSession struct {
	s    []*gomilter.ClientSession
	done []bool // milter i answered accept for the whole connection
}

func (c *chainSession) close() {
	for _, s := range c.s {
		if s != nil {
			s.Close()
		}
	}
}

func (r *runner) dial(i int) (*gomilter.ClientSession, error) {
	mask := gomilter.OptProtocol(r.protoMasks[i].Load())
	d := &countingDialer{d: net.Dialer{Timeout: r.opts.Timeout}}
	if r.opts.CountIO {
		d.st = r.io[i]
	}
	c := gomilter.NewClientWithOptions(r.opts.Chain[i].Network, r.opts.Chain[i].Address, gomilter.ClientOptions{
		Dialer: d, ReadTimeout: r.opts.Timeout, WriteTimeout: r.opts.Timeout,
		ActionMask: actionMask, ProtocolMask: mask,
	})
	s, err := c.Session()
	if err != nil && d.conn != nil {
		// go-milter leaves the connection open when negotiation fails.
		d.conn.Close()
	}
	if errors.Is(err, gomilter.ErrUnsupportedMilterVersion) && mask != v2Proto {
		r.protoMasks[i].Store(uint32(v2Proto))
		return r.dial(i)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.opts.Chain[i], err)
	}
	return s, nil
}

// connection runs one SMTP connection of client cl. It returns whether the
// run goes on.
func (r *runner) connection(ctx context.Context, cl *Client, seed int) (bool, error) {
	if !r.take(ctx) {
		return false, nil
	}
	cs := &chainSession{s: make([]*gomilter.ClientSession, len(r.opts.Chain)), done: make([]bool, len(r.opts.Chain))}
	defer cs.close()
	r.mu.Lock()
	r.rep.Conns++
	r.mu.Unlock()
	fam := gomilter.FamilyInet
	if strings.Contains(cl.IP, ":") {
		fam = gomilter.FamilyInet6
	}
	for i := range r.opts.Chain {
		s, err := r.dial(i)
		if err != nil {
			return true, err
		}
		cs.s[i] = s
		// Postfix's default milter_connect_macros.
		if err := s.Macros(gomilter.CodeConn, "j", "mx.bench.test", "{daemon_name}", "smtpd", "v", "Postfix 3.7"); err != nil {
			return true, err
		}
		act, err := s.Conn(cl.Host, fam, 25, cl.IP)
		if err != nil {
			return true, fmt.Errorf("%s: connect: %w", r.opts.Chain[i], err)
		}
		if act.Code != gomilter.ActContinue {
			// Accepted (or refused) for the whole connection, as a
			// milter does for a trusted client.
			cs.done[i] = true
			continue
		}
		if act, err = s.Helo(cl.Helo); err != nil {
			return true, fmt.Errorf("%s: helo: %w", r.opts.Chain[i], err)
		}
		cs.done[i] = act.Code != gomilter.ActContinue
	}
	for n := 0; n < r.opts.PerConn; n++ {
		if n > 0 && !r.take(ctx) {
			return false, nil
		}
		m := cl.Msgs[(seed+n)%len(cl.Msgs)]
		start := time.Now()
		action, err := r.message(cs, m)
		if err != nil {
			return true, fmt.Errorf("%s: %w", m.Name, err)
		}
		r.record(m, action, m.Expect, time.Since(start))
	}
	return true, nil
}

func (r *runner) record(m *Message, action, want string, el time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.latencies = append(r.latencies, el)
	r.actions[action]++
	if want != "" && action != want {
		r.unexpected[fmt.Sprintf("%s: got %s, want %s", m.Name, action, want)]++
	}
}

// message runs one transaction through the chain and returns the action
// the MTA would take: accept, quarantine, reject, tempfail or discard.
func (r *runner) message(cs *chainSession, m *Message) (string, error) {
	fields := append([]testcase.Field(nil), m.Fields...)
	qid := strconv.FormatInt(0x100000+r.msgSeq.Add(1), 16)
	quarantined := false
	for i, s := range cs.s {
		if cs.done[i] {
			continue
		}
		act, mods, err := r.transact(s, m, fields, qid)
		if err != nil {
			return "", fmt.Errorf("%s: %w", r.opts.Chain[i], err)
		}
		// Postfix aborts the milter transaction at the end of every
		// message before the next MAIL.
		if err := s.Abort(); err != nil {
			return "", fmt.Errorf("%s: abort: %w", r.opts.Chain[i], err)
		}
		if a := verdict(act); a != "accept" {
			r.trace(m, a+fmt.Sprintf(" by %s (%d %s)", r.opts.Chain[i], act.SMTPCode, act.SMTPText), fields)
			return a, nil
		}
		for _, mod := range mods {
			if mod.Code == gomilter.ActQuarantine {
				quarantined = true
			}
		}
		fields = applyMods(fields, mods)
	}
	action := "accept"
	if quarantined {
		action = "quarantine"
	}
	r.trace(m, action, fields)
	return action, nil
}

func (r *runner) trace(m *Message, action string, fields []testcase.Field) {
	if r.opts.Trace == nil || r.traced.Add(1) > int64(r.opts.TraceN) {
		return
	}
	sent := map[testcase.Field]int{}
	for _, f := range m.Fields {
		sent[f]++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s\n", m.Name, action)
	for _, f := range fields {
		if sent[f] > 0 {
			sent[f]--
			continue
		}
		fmt.Fprintf(&b, "  + %s:%s\n", f.Name, strings.ReplaceAll(f.Value, "\r\n", "\n"))
	}
	r.mu.Lock()
	io.WriteString(r.opts.Trace, b.String())
	r.mu.Unlock()
}

func verdict(act *gomilter.Action) string {
	switch act.Code {
	case gomilter.ActContinue, gomilter.ActAccept:
		return "accept"
	case gomilter.ActDiscard:
		return "discard"
	case gomilter.ActReject:
		return "reject"
	case gomilter.ActTempFail:
		return "tempfail"
	case gomilter.ActReplyCode:
		switch {
		case act.SMTPCode >= 500:
			return "reject"
		case act.SMTPCode >= 400:
			return "tempfail"
		}
		return "accept"
	}
	return "unknown:" + string(rune(act.Code))
}

// transact sends one message to one milter, the way Postfix does:
// macros, MAIL, RCPT, each header field, end of header, the body in
// chunks, end of message.
func (r *runner) transact(s *gomilter.ClientSession, m *Message, fields []testcase.Field, qid string) (*gomilter.Action, []gomilter.ModifyAction, error) {
	cont := func(act *gomilter.Action, err error) (bool, error) {
		return err == nil && act.Code == gomilter.ActContinue, err
	}
	if err := s.Macros(gomilter.CodeMail, "i", qid, "{mail_addr}", m.MailFrom); err != nil {
		return nil, nil, err
	}
	act, err := s.Mail(m.MailFrom, nil)
	if ok, err := cont(act, err); !ok {
		return act, nil, err
	}
	for _, rc := range m.Rcpt {
		if err := s.Macros(gomilter.CodeRcpt, "{rcpt_addr}", rc); err != nil {
			return nil, nil, err
		}
		act, err = s.Rcpt(rc, nil)
		if ok, err := cont(act, err); !ok {
			return act, nil, err
		}
	}
	lead := s.ProtocolOption(gomilter.OptHeaderLeadingSpace)
	for _, f := range fields {
		// Postfix hands folded lines over with LF, and without
		// HDR_LEADSPC it drops the one space after the colon.
		v := strings.ReplaceAll(f.Value, "\r\n", "\n")
		if !lead {
			v = strings.TrimPrefix(v, " ")
		}
		act, err = s.HeaderField(f.Name, v)
		if ok, err := cont(act, err); !ok {
			return act, nil, err
		}
	}
	act, err = s.HeaderEnd()
	if ok, err := cont(act, err); !ok {
		return act, nil, err
	}
	for body := m.Body; len(body) > 0; {
		n := min(len(body), gomilter.MaxBodyChunk)
		act, err = s.BodyChunk(body[:n])
		if ok, err := cont(act, err); !ok {
			return act, nil, err
		}
		body = body[n:]
	}
	if err := s.Macros(gomilter.CodeEOB, "i", qid); err != nil {
		return nil, nil, err
	}
	mods, act, err := s.End()
	return act, mods, err
}

// applyMods changes the header as the MTA would, so that the next
// milter of the chain sees it (OpenDMARC reads OpenDKIM's
// Authentication-Results this way).
func applyMods(fields []testcase.Field, mods []gomilter.ModifyAction) []testcase.Field {
	for _, m := range mods {
		v := m.HeaderValue
		if v != "" && !strings.HasPrefix(v, " ") && !strings.HasPrefix(v, "\t") {
			v = " " + v
		}
		v = strings.ReplaceAll(strings.ReplaceAll(v, "\r\n", "\n"), "\n", "\r\n")
		switch m.Code {
		case gomilter.ActAddHeader:
			fields = append(fields, testcase.Field{Name: m.HeaderName, Value: v})
		case gomilter.ActInsertHeader:
			i := min(int(m.HeaderIndex), len(fields))
			fields = append(fields[:i], append([]testcase.Field{{Name: m.HeaderName, Value: v}}, fields[i:]...)...)
		case gomilter.ActChangeHeader:
			// The index counts fields of that name, from 1.
			n := 0
			for j := range fields {
				if !strings.EqualFold(fields[j].Name, m.HeaderName) {
					continue
				}
				if n++; n != int(m.HeaderIndex) {
					continue
				}
				if m.HeaderValue == "" {
					fields = append(fields[:j], fields[j+1:]...)
				} else {
					fields[j].Value = v
				}
				break
			}
		}
	}
	return fields
}
