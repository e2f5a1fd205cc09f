package milter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dmarc-milter/dmarc-milter/auth"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// ConnInfo is what the MTA tells us about the SMTP client.
type ConnInfo struct {
	Host string // client host name as the MTA resolved it
	IP   net.IP
	Helo string
}

// Transaction is one message under evaluation, independent of the milter
// protocol: the milter session feeds it from go-milter callbacks, and
// `dmarc-milter check` from a saved message, so both decide the same way.
// Its methods are not safe for concurrent use.
type Transaction struct {
	srv *Server
	cfg *Config

	ctx         context.Context
	cancelCause context.CancelCauseFunc
	budget      *time.Timer // the DNS budget, from EndHeaders
	start       time.Time

	Conn     ConnInfo
	MailFrom string
	Rcpts    []string
	QueueID  string
	// Skip says why this message is not evaluated ("" = evaluate).
	Skip string

	spf chan auth.SPFResult

	headerBytes int
	headerOver  bool
	fromValues  []string
	fromFields  int   // every From field, also those past maxFromValues
	arIndexes   []int // 1-based per-name indexes of A-R fields carrying our authserv-id
	arCount     int

	dkim *auth.DKIMVerifier

	author    auth.AuthorInfo
	authorErr error
	// tooMany: From fields or Author Domains past what we evaluate.
	tooMany error
	disc    map[string]chan *policy.Discovery

	mode      string // effective mode, set by Finish
	rcptMode0 string // the mode of the first recipient
	// spfTime and dmarcTime are the wall times of the SPF check and the
	// longest DMARC discovery, for the decision log (atomic: a lookup
	// cut off by the budget may still be writing).
	spfTime, dmarcTime atomic.Int64
	// clientUnsure says why DNS trouble left open whether the client is
	// a listed forwarder or mailing list (localFacts).
	clientUnsure string
	facts        *policy.LocalFacts
}

// Begin starts a transaction at MAIL FROM. SPF starts now, in the
// background, so its DNS time overlaps with the transfer (DESIGN.md).
// authenticated is the SASL login name ({auth_authen}), if any.
func (s *Server) Begin(cfg *Config, conn ConnInfo, mailFrom, authenticated string) *Transaction {
	if cfg == nil {
		cfg = s.currentConfig()
	}
	// The DNS budget starts at the end of the header, not here: Postfix
	// sends the header only once the client has finished DATA, and a
	// slow DATA must not use up the time of lookups that start after it
	// (a spurious temperror, 451 on every retry). SPF, which starts now,
	// is bounded by the resolver's per-query timeouts until then.
	ctx, cancel := context.WithCancelCause(context.Background())
	t := &Transaction{srv: s, cfg: cfg, ctx: ctx, cancelCause: cancel, start: time.Now(), Conn: conn, MailFrom: mailFrom, disc: map[string]chan *policy.Discovery{}}
	if cfg.SkipAuthenticated && authenticated != "" {
		t.Skip = "authenticated"
		return t
	}
	// RFC 9989 §4.4 uses only the RFC 5321.MailFrom identity, and for a
	// null reverse path postmaster@<HELO> (RFC 7208 §2.4).
	t.spf = make(chan auth.SPFResult, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				s.log.Error("panic in SPF check", "panic", fmt.Sprint(v))
				t.spf <- auth.SPFResult{Result: "temperror", Err: fmt.Errorf("internal error: %v", v)}
			}
		}()
		began := time.Now()
		r := auth.CheckSPF(ctx, s.deps.Resolver, conn.IP, conn.Helo, mailFrom)
		took := time.Since(began)
		s.metrics.dnsTime("spf", took)
		t.spfTime.Store(int64(took))
		t.spf <- r
	}()
	t.dkim = auth.NewDKIMVerifier(ctx, s.deps.Resolver.LookupTXT, cfg.MaxDKIMSignatures)
	return t
}

// AddRcpt records an envelope recipient, or returns the reply that
// defers it: one milter answer covers the whole message, so a recipient
// whose domain has another mode (Config.RecipientModes) than the first
// one is sent back with 452 4.5.3, and the client delivers it in a
// transaction of its own (RFC 5321 §4.5.3.1.10 has clients retry such
// recipients later). Neither mode can then be bypassed: adding a
// recipient in an "off" domain must not switch DMARC off for the
// enforcing ones, and an enforcing co-recipient must not reject mail for
// a domain that turned DMARC off.
func (t *Transaction) AddRcpt(rcpt string) (reply string) {
	if len(t.cfg.RecipientModes) > 0 && t.Skip == "" {
		m, _ := t.rcptMode(rcpt)
		if len(t.Rcpts) > 0 && m != t.rcptMode0 {
			return "452 4.5.3 Recipient has other DMARC settings than the others, send it separately"
		}
		t.rcptMode0 = m
	}
	if len(t.Rcpts) < 1000 {
		t.Rcpts = append(t.Rcpts, rcpt)
	}
	return ""
}

// AddHeader takes one header field in message order, the value as the
// MTA sends it with OptHeaderLeadingSpace (leading space kept, folded
// lines joined by LF).
func (t *Transaction) AddHeader(name, value string) {
	// The per-name index counts every field of that name, kept or not,
	// because the MTA's change-header index does.
	isAR := strings.EqualFold(name, "Authentication-Results")
	if isAR {
		t.arCount++
		// RFC 8601 §5: fields claiming our authserv-id that arrive from
		// outside are forgeries and must go, even past the size limit,
		// and even on mail we do not evaluate (a SASL client, a domain
		// with DMARC off): downstream filters trust our id whatever.
		if id, ok := auth.AuthServID(value); ok && auth.SameAuthServID(id, t.cfg.AuthServID) {
			t.arIndexes = append(t.arIndexes, t.arCount)
		}
	}
	if t.Skip != "" {
		return
	}
	isFrom := strings.EqualFold(name, "From")
	t.headerBytes += len(name) + len(value) + 3
	if t.headerBytes > t.cfg.MaxHeaderBytes {
		if !t.headerOver {
			t.headerOver = true
			t.srv.log.Warn("header exceeds limit; rest not verified", "limit", t.cfg.MaxHeaderBytes, "queue_id", t.QueueID)
		}
		if isFrom {
			t.fromFields++
			if len(t.fromValues) < maxFromValues {
				t.fromValues = append(t.fromValues, truncate(value, auth.MaxFromLength+1))
			}
		}
		return
	}
	if isFrom {
		t.fromFields++
		if len(t.fromValues) < maxFromValues {
			t.fromValues = append(t.fromValues, value)
		}
	}
	t.dkim.AddHeader(name, value)
}

// EndHeaders parses the author and starts the DMARC record lookups, so
// their DNS time overlaps with the body transfer (DESIGN.md).
func (t *Transaction) EndHeaders() {
	if t.Skip != "" {
		return
	}
	t.author, t.authorErr = auth.AuthorDomains(t.fromValues)
	switch {
	case t.fromFields > len(t.fromValues):
		t.tooMany = fmt.Errorf("%w: %d From fields, at most %d read", errTooManyAuthors, t.fromFields, maxFromValues)
	case len(t.author.Domains) > maxAuthorDomains:
		t.tooMany = fmt.Errorf("%w: From names %d domains, at most %d evaluated", errTooManyAuthors, len(t.author.Domains), maxAuthorDomains)
	}
	for i, d := range t.author.Domains {
		if i >= maxAuthorDomains {
			break
		}
		ch := make(chan *policy.Discovery, 1)
		t.disc[d] = ch
		go func(d string) {
			defer func() {
				if v := recover(); v != nil {
					t.srv.log.Error("panic in DMARC discovery", "panic", fmt.Sprint(v))
					ch <- nil
				}
			}()
			began := time.Now()
			disc := t.srv.deps.Evaluator.Discover(t.ctx, d)
			took := time.Since(began)
			t.srv.metrics.dnsTime("dmarc", took)
			for { // the longest discovery of the message
				old := t.dmarcTime.Load()
				if int64(took) <= old || t.dmarcTime.CompareAndSwap(old, int64(took)) {
					break
				}
			}
			ch <- disc
		}(d)
	}
	t.dkim.PreferDomains(t.author.Domains)
	t.dkim.EndHeaders()
	t.startBudget()
}

// errBudget is the cause of a transaction's context ending at its
// DNS budget.
var errBudget = fmt.Errorf("message DNS budget exhausted: %w", context.DeadlineExceeded)

// startBudget starts the per-message DNS budget (Config.MessageTimeout)
// once; EndHeaders calls it, and Finish for a message that had none.
func (t *Transaction) startBudget() {
	if t.budget == nil {
		t.budget = time.AfterFunc(t.cfg.MessageTimeout, func() { t.cancelCause(errBudget) })
	}
}

// ForgedAR returns the 1-based indexes of the Authentication-Results
// fields that carry our authserv-id, to delete (evaluated or not).
func (t *Transaction) ForgedAR() []int { return append([]int(nil), t.arIndexes...) }

// maxAuthorDomains and maxFromValues bound the work From fields can
// cause. A message past either is refused (see decide), never delivered
// with the rest unevaluated.
const (
	maxAuthorDomains = 10
	maxFromValues    = 50
)

var errTooManyAuthors = errors.New("too many From domains")

// WriteBody streams a body chunk (CRLF line ends) to the DKIM verifier.
func (t *Transaction) WriteBody(chunk []byte) {
	if t.Skip == "" {
		_, _ = t.dkim.Write(chunk)
	}
}

// Abort releases everything the transaction started. Safe to call twice.
func (t *Transaction) Abort() {
	if t.dkim != nil {
		t.dkim.Abort()
	}
	if t.budget != nil {
		t.budget.Stop()
	}
	t.cancelCause(context.Canceled)
}

// Finish waits for SPF, DKIM and the DMARC lookups (bounded by the message
// deadline), decides, logs the decision and releases the transaction. It
// returns nil for a transaction that is not evaluated (Skip).
func (t *Transaction) Finish() *Decision {
	defer t.Abort()
	began := time.Now()
	var modeWhy string
	t.mode, modeWhy = t.effectiveMode()
	if t.mode == "off" && t.Skip == "" {
		t.Skip = "recipient mode off"
	}
	if t.Skip != "" {
		// One line per message, evaluated or not, for whoever greps the
		// log for a queue id.
		why := t.Skip
		if modeWhy != "" && t.Skip == "recipient mode off" {
			why = modeWhy
		}
		t.srv.log.Info("dmarc not evaluated", "queue_id", t.QueueID, "client_ip", t.Conn.IP.String(),
			"mail_from", t.MailFrom, "why", why, "forged_ar_removed", len(t.arIndexes))
		t.srv.metrics.skipped(t.Skip)
		return nil
	}
	d := t.decide()
	if modeWhy != "" && t.mode != t.cfg.Mode {
		d.Why = strings.TrimPrefix(d.Why+"; "+modeWhy, "; ")
	}
	d.AuthResults = t.formatAR(d)
	d.RemoveAR = t.ForgedAR()
	if d.Action == ActionQuarantine && t.cfg.Quarantine == "tag" {
		name, value, _ := strings.Cut(t.cfg.QuarantineHeader, ":")
		d.TagHeader = [2]string{strings.TrimSpace(name), " " + strings.TrimSpace(value)}
	}
	d.Elapsed = time.Since(t.start)
	d.SPFTime, d.DMARCTime = time.Duration(t.spfTime.Load()), time.Duration(t.dmarcTime.Load())
	t.srv.metrics.decided(d)
	t.srv.metrics.Decision.Observe(time.Since(began).Seconds())
	t.srv.metrics.Message.Observe(d.Elapsed.Seconds())
	t.logDecision(d)
	return d
}

// Action is what the MTA is told to do with one message.
type Action string

const (
	ActionAccept     Action = "accept"
	ActionQuarantine Action = "quarantine"
	ActionReject     Action = "reject"
	ActionTempfail   Action = "tempfail"
)

// severity orders actions for a message with several Author Domains: the
// strictest wins (issue 3). A tempfail outranks quarantine because the
// retry may end in a reject.
func (a Action) severity() int {
	switch a {
	case ActionReject:
		return 3
	case ActionTempfail:
		return 2
	case ActionQuarantine:
		return 1
	}
	return 0
}

// Decision is the whole outcome of one message: what the header, the log,
// the metrics and `dmarc-milter check` all explain.
type Decision struct {
	SPF       auth.SPFResult
	DKIM      []auth.DKIMResult
	ARC       auth.ARCResult
	Author    auth.AuthorInfo
	AuthorErr error
	Evals     []policy.Evaluation
	Action    Action
	// Domain is the policy domain named in a reject or tempfail reply.
	Domain string
	// Reply is the SMTP reply text for reject and tempfail.
	Reply string
	// Why explains an action that does not follow from the evaluations
	// alone (monitor mode, malformed From, ...).
	Why string

	// AuthResults is our Authentication-Results value.
	AuthResults string
	// RemoveAR are the 1-based indexes of forged A-R fields to delete.
	RemoveAR []int
	// TagHeader is the header to add in tag-mode quarantine (empty name:
	// none).
	TagHeader [2]string
	Elapsed   time.Duration
	// SPFTime and DMARCTime are the DNS wall times of the SPF check and
	// of the longest DMARC discovery (cache hits included); zero when
	// unfinished.
	SPFTime, DMARCTime time.Duration
}

func (t *Transaction) decide() *Decision {
	d := &Decision{Author: t.author, AuthorErr: t.authorErr}
	t.startBudget()
	// A result already in wins over a budget that ran out meanwhile
	// (select picks at random among ready cases); likewise below.
	select {
	case d.SPF = <-t.spf:
	default:
		select {
		case d.SPF = <-t.spf:
		case <-t.ctx.Done():
			d.SPF = auth.SPFResult{Result: "temperror", Err: fmt.Errorf("spf: %w", context.Cause(t.ctx))}
		}
	}
	d.DKIM = t.dkim.Finish()
	d.ARC = t.dkim.ARC()

	in := policy.Input{SPF: policy.AuthResult{Result: d.SPF.Result, Domain: d.SPF.Domain}}
	for _, r := range d.DKIM {
		in.DKIM = append(in.DKIM, policy.AuthResult{Result: r.Result, Domain: r.Domain, Selector: r.Selector})
	}

	d.Action = ActionAccept
	switch {
	case t.tooMany != nil:
		// Evaluating only the first domains would let padding hide a
		// later domain's p=reject (RFC 9989 §4.4: each Author Domain
		// counts), so this shape, which no legitimate sender produces,
		// is refused whatever -on-malformed-from says. Permanent: 5xx.
		d.Why = errTooManyAuthors.Error()
		d.Evals = append(d.Evals, policy.Evaluation{Result: policy.ResultPermError, Err: fmt.Errorf("%w: %w", policy.ErrNoAuthorDomain, t.tooMany)})
		if t.mode != "monitor" {
			d.Action = ActionReject
			d.Reply = "550 5.7.1 Message rejected: " + d.Why
		} else {
			// The comment already names the defect (errSummary).
			d.Why = "monitor mode: would reject"
		}
		return d
	case t.authorErr != nil || len(t.author.Domains) == 0:
		// RFC 9989 §4.4 / RFC 7489 §6.6.1: without a usable Author
		// Domain DMARC cannot be applied; RFC 5322 §3.6 requires exactly
		// one From field with a mailbox, so the message is malformed.
		// Permanent: never a 4xx loop for it.
		why := "no usable From domain"
		if t.authorErr != nil {
			why = errSummary(t.authorErr)
		}
		d.Evals = append(d.Evals, policy.Evaluation{Result: policy.ResultPermError, Err: fmt.Errorf("%w: %w", policy.ErrNoAuthorDomain, errOr(t.authorErr, errors.New(why)))})
		d.Why = why
		if t.cfg.OnMalformedFrom == "reject" && t.mode != "monitor" {
			d.Action = ActionReject
			d.Reply = "550 5.7.1 Message rejected: " + why
			return d
		}
		if len(t.author.Domains) == 0 {
			return d
		}
		// Accepted anyway, but the mailboxes that do name a domain are
		// still evaluated: "ceo@bank.test, x@[192.0.2.1]" must not get
		// past bank.test's p=reject because its second mailbox is
		// unusable (AuthorDomains keeps what was usable for this).
	}
	// After the case above too: an unusable mailbox beside two domains
	// must not get around reject_multi_domain_from.
	if len(t.author.Domains) > 1 && t.cfg.RejectMultiDomainFrom && t.mode != "monitor" {
		d.Why = "From names several domains"
		d.Action = ActionReject
		d.Reply = "550 5.7.1 Message rejected: From names several domains"
		for _, dom := range t.author.Domains {
			d.Evals = append(d.Evals, policy.Evaluation{Result: policy.ResultPermError, FromDomain: dom, Err: fmt.Errorf("%w: several author domains", policy.ErrNoAuthorDomain)})
		}
		return d
	}

	for i, dom := range t.author.Domains {
		if i >= maxAuthorDomains {
			break
		}
		var disc *policy.Discovery
		select {
		case disc = <-t.disc[dom]:
		default:
			select {
			case disc = <-t.disc[dom]:
			case <-t.ctx.Done():
			}
		}
		var ev policy.Evaluation
		if disc == nil {
			ev = policy.Evaluation{Result: policy.ResultTempError, FromDomain: dom, Err: fmt.Errorf("%w: %w", policy.ErrDNS, errNoDiscovery)}
		} else {
			in.FromDomain = dom
			ev = t.srv.deps.Evaluator.Evaluate(t.ctx, disc, in)
			if ev.Result == policy.ResultFail {
				// Local policy, in one place, before the action is chosen.
				f := t.localFacts()
				f.ARCPass = t.trustedARC(d.ARC, dom)
				t.cfg.Local.Apply(&ev, f)
			}
		}
		a, reply := t.actionFor(&ev)
		if _, forced := t.cfg.Local.RejectFrom.Match(ev.FromDomain); a == ActionReject && t.clientUnsure != "" && !localOverride(&ev) && !forced {
			// The client may be a listed forwarder and DNS could not tell:
			// a reject would bounce its mail for our DNS trouble. Never
			// accept instead either: the client's reverse zone is its
			// own, and failing it on purpose must not switch DMARC off.
			a, reply = ActionTempfail, "451 4.4.3 Could not check whether the client is a trusted forwarder, try again later"
			ev.Reasons = append(ev.Reasons, "forwarder check: "+t.clientUnsure)
			d.Why = strings.TrimPrefix(d.Why+"; forwarder check: "+t.clientUnsure, "; ")
		}
		d.Evals = append(d.Evals, ev)
		if a.severity() > d.Action.severity() {
			d.Action, d.Reply = a, reply
			d.Domain = ev.PolicyDomain
			if d.Domain == "" {
				d.Domain = ev.FromDomain
			}
		}
	}
	if t.mode == "monitor" && d.Action != ActionAccept {
		d.Why = strings.TrimPrefix(d.Why+"; monitor mode: would "+string(d.Action), "; ")
		d.Action, d.Reply = ActionAccept, ""
	}
	return d
}

// localOverride reports whether local policy changed ev's disposition.
func localOverride(ev *policy.Evaluation) bool {
	for _, o := range ev.Overrides {
		switch o.Type {
		case policy.OverrideLocalPolicy, policy.OverrideTrustedForwarder, policy.OverrideMailingList:
			return true
		}
	}
	return false
}

func (t *Transaction) actionFor(ev *policy.Evaluation) (Action, string) {
	dom := ev.PolicyDomain
	if dom == "" {
		dom = ev.FromDomain
	}
	switch ev.Result {
	case policy.ResultFail:
		switch ev.Disposition {
		case policy.PolicyReject:
			if ev.Policy != policy.PolicyReject && localOverride(ev) {
				// reject_from: the domain did not ask for this, we did.
				return ActionReject, "550 5.7.1 Email rejected per local policy: DMARC failed for " + dom
			}
			// RFC 9989 §5.3.6 suggested text.
			return ActionReject, "550 5.7.1 Email rejected per DMARC policy for " + dom
		case policy.PolicyQuarantine:
			return ActionQuarantine, ""
		}
	case policy.ResultTempError:
		// RFC 9989 §5.3.6 / RFC 7489 §6.6.3: a DNS failure never leads
		// to a reject; fail closed with a 4xx or open, by configuration.
		if t.cfg.OnTempError == "tempfail" {
			return ActionTempfail, "451 4.7.5 DMARC policy for " + dom + " temporarily unavailable, try again later"
		}
	}
	return ActionAccept, ""
}

var errNoDiscovery = errors.New("dmarc discovery did not finish")

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}
