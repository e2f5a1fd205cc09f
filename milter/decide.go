package milter

import (
	"errors"
	"fmt"
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/auth"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

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

// Decision is the whole outcome of one message.
type Decision struct {
	SPF       auth.SPFResult
	DKIM      []auth.DKIMResult
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
}

func (s *session) decide(msg *message) *Decision {
	d := &Decision{Author: msg.author, AuthorErr: msg.authorErr}
	select {
	case d.SPF = <-msg.spf:
	case <-msg.ctx.Done():
		d.SPF = auth.SPFResult{Result: "temperror", Err: fmt.Errorf("spf: %w", msg.ctx.Err())}
	}
	d.DKIM = msg.dkim.Finish()

	in := policy.Input{SPF: policy.AuthResult{Result: d.SPF.Result, Domain: d.SPF.Domain}}
	for _, r := range d.DKIM {
		in.DKIM = append(in.DKIM, policy.AuthResult{Result: r.Result, Domain: r.Domain, Selector: r.Selector})
	}

	switch {
	case msg.authorErr != nil || len(msg.author.Domains) == 0:
		// RFC 9989 §4.4 / RFC 7489 §6.6.1: without exactly one usable
		// Author Domain DMARC cannot be applied; RFC 5322 §3.6 requires
		// one From field, so the message is malformed.
		why := "no usable From domain"
		if msg.authorErr != nil {
			why = errSummary(msg.authorErr)
		}
		d.Evals = append(d.Evals, policy.Evaluation{Result: policy.ResultPermError, Err: fmt.Errorf("%w: %w", policy.ErrNoAuthorDomain, errOr(msg.authorErr, errors.New(why)))})
		d.Why = why
		if s.cfg.OnMalformedFrom == "reject" {
			d.Action = ActionReject
			d.Reply = "550 5.7.1 Message rejected: " + why
		} else {
			d.Action = ActionAccept
		}
		return d
	case len(msg.author.Domains) > 1 && s.cfg.RejectMultiDomainFrom:
		d.Why = "From names several domains"
		d.Action = ActionReject
		d.Reply = "550 5.7.1 Message rejected: From names several domains"
		for _, dom := range msg.author.Domains {
			d.Evals = append(d.Evals, policy.Evaluation{Result: policy.ResultPermError, FromDomain: dom, Err: fmt.Errorf("%w: several author domains", policy.ErrNoAuthorDomain)})
		}
		return d
	}

	d.Action = ActionAccept
	for i, dom := range msg.author.Domains {
		if i >= maxAuthorDomains {
			break
		}
		var disc *policy.Discovery
		select {
		case disc = <-msg.disc[dom]:
		case <-msg.ctx.Done():
		}
		var ev policy.Evaluation
		if disc == nil {
			ev = policy.Evaluation{Result: policy.ResultTempError, FromDomain: dom, Err: fmt.Errorf("%w: %w", policy.ErrDNS, errNoDiscovery)}
		} else {
			in.FromDomain = dom
			ev = s.srv.deps.Evaluator.Evaluate(msg.ctx, disc, in)
		}
		d.Evals = append(d.Evals, ev)
		a, reply := s.actionFor(&ev)
		if a.severity() > d.Action.severity() {
			d.Action, d.Reply = a, reply
			d.Domain = ev.PolicyDomain
			if d.Domain == "" {
				d.Domain = ev.FromDomain
			}
		}
	}
	if s.cfg.Mode == "monitor" && d.Action != ActionAccept {
		d.Why = "monitor mode: would " + string(d.Action)
		d.Action, d.Reply = ActionAccept, ""
	}
	return d
}

func (s *session) actionFor(ev *policy.Evaluation) (Action, string) {
	dom := ev.PolicyDomain
	if dom == "" {
		dom = ev.FromDomain
	}
	switch ev.Result {
	case policy.ResultFail:
		switch ev.Disposition {
		case policy.PolicyReject:
			// RFC 9989 §5.3.6 suggested text.
			return ActionReject, "550 5.7.1 Email rejected per DMARC policy for " + dom
		case policy.PolicyQuarantine:
			return ActionQuarantine, ""
		}
	case policy.ResultTempError:
		// RFC 9989 §5.3.x / RFC 7489 §6.6.3: a DNS failure never leads to a
		// reject; fail closed with a 4xx or open, by configuration.
		if s.cfg.OnTempError == "tempfail" {
			return ActionTempfail, "451 4.7.5 DMARC policy for " + dom + " temporarily unavailable, try again later"
		}
	}
	return ActionAccept, ""
}

// act sends the decision to the MTA. Nothing here returns a final
// SimpleResponse (LIBRARIES.md, go-milter).
func (s *session) act(m *gomilter.Modifier, msg *message, d *Decision) (gomilter.Response, error) {
	defer s.logDecision(msg, d)
	s.srv.metrics.decided(d)
	switch d.Action {
	case ActionReject, ActionTempfail:
		// Header changes would be thrown away with the message.
		return reply(d.Reply), nil
	}
	// Delete from the highest index down: each deletion shifts the
	// indexes of the fields below it (go-milter #31, OpenDKIM
	// CVE-2022-48521).
	for i := len(msg.arIndexes) - 1; i >= 0; i-- {
		if err := m.ChangeHeader(msg.arIndexes[i], "Authentication-Results", ""); err != nil {
			return nil, err
		}
	}
	// RFC 8601 §5: ours goes on top, above anything it vouches for.
	if err := m.InsertHeader(0, "Authentication-Results", s.formatAR(d)); err != nil {
		return nil, err
	}
	if d.Action == ActionQuarantine {
		if s.cfg.Quarantine == "hold" {
			if err := m.Quarantine("DMARC policy quarantine for " + d.Domain); err != nil {
				return nil, err
			}
		} else {
			name, value, _ := strings.Cut(s.cfg.QuarantineHeader, ":")
			if err := m.AddHeader(strings.TrimSpace(name), " "+strings.TrimSpace(value)); err != nil {
				return nil, err
			}
		}
	}
	return gomilter.RespContinue, nil
}

// formatAR writes our Authentication-Results value (RFC 8601 §2.2).
func (s *session) formatAR(d *Decision) string {
	var ms []auth.ARMethod
	spf := auth.ARMethod{Method: "spf", Result: d.SPF.Result}
	if spf.Result == "" {
		spf.Result = "none"
	}
	// RFC 8601 §2.7.2: smtp.mailfrom, or smtp.helo for a null path.
	if d.SPF.Identity == "helo" {
		spf.Props = append(spf.Props, auth.ARProp{Type: "smtp", Property: "helo", Value: d.SPF.Domain})
	} else if d.SPF.Domain != "" {
		spf.Props = append(spf.Props, auth.ARProp{Type: "smtp", Property: "mailfrom", Value: d.SPF.Domain})
	}
	ms = append(ms, spf)
	if len(d.DKIM) == 0 {
		ms = append(ms, auth.ARMethod{Method: "dkim", Result: "none"})
	}
	for _, r := range d.DKIM {
		m := auth.ARMethod{Method: "dkim", Result: r.Result, Reason: r.Reason}
		if r.Domain != "" {
			m.Props = append(m.Props, auth.ARProp{Type: "header", Property: "d", Value: r.Domain})
		}
		if r.Selector != "" {
			m.Props = append(m.Props, auth.ARProp{Type: "header", Property: "s", Value: r.Selector})
		}
		if r.BPrefix != "" {
			// RFC 6008 §4: enough of b= to tell signatures apart.
			m.Props = append(m.Props, auth.ARProp{Type: "header", Property: "b", Value: r.BPrefix})
		}
		ms = append(ms, m)
	}
	for _, ev := range d.Evals {
		m := auth.ARMethod{Method: "dmarc", Result: string(ev.Result)}
		var comment []string
		if ev.Record != nil {
			comment = append(comment, "p="+strings.ToUpper(string(ev.Record.P)))
			if ev.Record.HasSP {
				comment = append(comment, "sp="+strings.ToUpper(string(ev.Record.SP)))
			}
			if ev.Applied != "" && ev.Applied != "p" {
				comment = append(comment, "applied="+ev.Applied)
			}
			if ev.Result == policy.ResultFail {
				comment = append(comment, "dis="+strings.ToUpper(string(ev.Disposition)))
			}
		}
		for _, o := range ev.Overrides {
			comment = append(comment, "override="+o.Type)
		}
		if ev.Err != nil && (ev.Result == policy.ResultTempError || ev.Result == policy.ResultPermError) {
			comment = append(comment, errSummary(ev.Err))
		}
		if d.Why != "" && len(d.Evals) == 1 && !strings.Contains(strings.Join(comment, " "), d.Why) {
			comment = append(comment, d.Why)
		}
		m.Comment = strings.Join(comment, " ")
		if ev.FromDomain != "" {
			m.Props = append(m.Props, auth.ARProp{Type: "header", Property: "from", Value: ev.FromDomain})
		}
		if ev.Record != nil {
			// RFC 9989 §9.x registers policy.dmarc: the policy applied
			// after pct/t processing.
			pol := ev.Disposition
			if ev.Result != policy.ResultFail {
				pol = ev.Policy
			}
			if pol != "" {
				m.Props = append(m.Props, auth.ARProp{Type: "policy", Property: "dmarc", Value: string(pol)})
			}
		}
		ms = append(ms, m)
	}
	return auth.FormatAR(s.cfg.AuthServID, ms)
}

// errSummary names the kind of failure for the A-R comment; the details
// (resolver addresses, raw records) go to the log only, so the header
// neither reveals our setup nor varies between runs.
func errSummary(err error) string {
	switch {
	case errors.Is(err, policy.ErrDNS):
		return "DNS failure"
	case errors.Is(err, auth.ErrNoFrom):
		return "no From field"
	case errors.Is(err, auth.ErrFromTooLong):
		return "From field too long"
	case errors.Is(err, auth.ErrNoAuthorDomain), errors.Is(err, auth.ErrFromSyntax), errors.Is(err, policy.ErrNoAuthorDomain):
		return "no usable From domain"
	case errors.Is(err, policy.ErrSyntax):
		return "unusable DMARC record"
	}
	return "error"
}

func (s *session) logDecision(msg *message, d *Decision) {
	attrs := []any{
		"queue_id", msg.queueID,
		"client_ip", s.clientIP.String(),
		"helo", s.helo,
		"mail_from", msg.mailFrom,
		"from_domains", strings.Join(d.Author.Domains, ","),
		"spf", d.SPF.Result,
		"action", string(d.Action),
		"duration", time.Since(msg.start).Round(time.Microsecond).String(),
	}
	var dk []string
	for _, r := range d.DKIM {
		dk = append(dk, r.Domain+":"+r.Result)
	}
	attrs = append(attrs, "dkim", strings.Join(dk, ","))
	var dm, pols, disp, over []string
	for _, ev := range d.Evals {
		dm = append(dm, string(ev.Result))
		pols = append(pols, string(ev.Policy))
		disp = append(disp, string(ev.Disposition))
		for _, o := range ev.Overrides {
			over = append(over, o.Type)
		}
	}
	attrs = append(attrs, "dmarc", strings.Join(dm, ","), "policy", strings.Join(pols, ","), "disposition", strings.Join(disp, ","))
	if len(over) > 0 {
		attrs = append(attrs, "overrides", strings.Join(over, ","))
	}
	if d.Why != "" {
		attrs = append(attrs, "why", d.Why)
	}
	for _, ev := range d.Evals {
		if ev.Err != nil {
			attrs = append(attrs, "dmarc_error", ev.Err.Error())
			break
		}
	}
	s.log.Info("dmarc decision", attrs...)
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}
