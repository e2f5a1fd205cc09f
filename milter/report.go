package milter

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/auth"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// maxARDKIM bounds the dkim results written one by one in our A-R.
const maxARDKIM = 20

// formatAR writes our Authentication-Results value (RFC 8601 §2.2).
func (t *Transaction) formatAR(d *Decision) string {
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
	omitted := 0
	for i, r := range d.DKIM {
		// One entry per signature (RFC 8601 §2.7.1) up to a bound, passes
		// always: thousands of hostile signatures must not make a header
		// of megabytes, which Postfix's header_size_limit would cut.
		if i >= maxARDKIM && r.Result != auth.DKIMPass {
			omitted++
			continue
		}
		m := auth.ARMethod{Method: "dkim", Result: r.Result, Reason: hideResolver(r.Reason)}
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
	if omitted > 0 {
		ms = append(ms, auth.ARMethod{Method: "dkim", Result: auth.DKIMPolicy, Comment: fmt.Sprintf("%d more signatures not listed", omitted)})
	}
	if d.ARC.Result != "" && d.ARC.Result != auth.ARCNone {
		// RFC 8617 §10.1 registers the "arc" method. No arc=none without
		// ARC fields: it would say nothing on most mail.
		m := auth.ARMethod{Method: "arc", Result: d.ARC.Result, Reason: hideResolver(d.ARC.Reason)}
		if d.ARC.Result == auth.ARCPass {
			m.Comment = fmt.Sprintf("i=%d d=%s", d.ARC.Instance, d.ARC.SealDomain)
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
		// Issue 3: say what discovery threw away, so "none" after two
		// records or a broken one is not mistaken for "nothing published".
		comment = append(comment, ev.Discarded...)
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
	return auth.FormatAR(t.cfg.AuthServID, ms)
}

// errSummary names the kind of failure for the A-R comment; the details
// (resolver addresses, raw records) go to the log only, so the header
// neither reveals our setup nor varies between runs.
func errSummary(err error) string {
	switch {
	case errors.Is(err, policy.ErrDNS):
		return "DNS failure"
	case errors.Is(err, errTooManyAuthors):
		return errTooManyAuthors.Error()
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

func (t *Transaction) logDecision(d *Decision) {
	attrs := []any{
		"queue_id", t.QueueID,
		"client_ip", t.Conn.IP.String(),
		"helo", t.Conn.Helo,
		"mail_from", t.MailFrom,
		"from_domains", strings.Join(d.Author.Domains, ","),
		"spf", d.SPF.Result,
		"action", string(d.Action),
		"duration", d.Elapsed.Round(time.Microsecond).String(),
		"dns_spf", d.SPFTime.Round(time.Microsecond).String(),
		"dns_dmarc", d.DMARCTime.Round(time.Microsecond).String(),
	}
	var dk []string
	for _, r := range d.DKIM {
		dk = append(dk, r.Domain+":"+r.Result)
	}
	attrs = append(attrs, "dkim", strings.Join(dk, ","))
	if d.ARC.Result != "" && d.ARC.Result != auth.ARCNone {
		arc := d.ARC.Result
		if d.ARC.Reason != "" {
			arc += " (" + d.ARC.Reason + ")"
		}
		attrs = append(attrs, "arc", arc)
	}
	var dm, pdoms, pols, disp, over []string
	for _, ev := range d.Evals {
		dm = append(dm, string(ev.Result))
		pdoms = append(pdoms, ev.PolicyDomain)
		pols = append(pols, string(ev.Policy))
		disp = append(disp, string(ev.Disposition))
		for _, o := range ev.Overrides {
			// The type alone does not say which allow_from entry,
			// forwarder or upstream let a failure through; the comment
			// does, as the type and comment of an aggregate report's reason.
			if o.Comment != "" {
				over = append(over, o.Type+"("+o.Comment+")")
			} else {
				over = append(over, o.Type)
			}
		}
	}
	attrs = append(attrs, "dmarc", strings.Join(dm, ","), "policy_domain", strings.Join(pdoms, ","),
		"policy", strings.Join(pols, ","), "disposition", strings.Join(disp, ","))
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
	var discarded []string
	for _, ev := range d.Evals {
		discarded = append(discarded, ev.Discarded...)
		if ev.Record != nil {
			// Tags the parser dropped or defaulted (issue 3: say what was
			// discarded), so a publisher's typo shows in the log too.
			discarded = append(discarded, ev.Record.Warnings...)
		}
	}
	if len(discarded) > 0 {
		attrs = append(attrs, "dmarc_discarded", strings.Join(discarded, "; "))
	}
	t.srv.log.Info("dmarc decision", attrs...)
}

// resolverAddr matches the " on SERVER:PORT" that net.DNSError puts in
// its text ("lookup NAME on 192.0.2.53:53: i/o timeout").
var resolverAddr = regexp.MustCompile(` on (\[[0-9A-Fa-f:.%]+\]|[0-9A-Za-z.\-]+):[0-9]+:`)

// hideResolver drops our resolver's address from a reason going into the
// header (errSummary's rule: the log has the details; the header should
// neither reveal our setup nor vary between runs).
func hideResolver(reason string) string {
	return resolverAddr.ReplaceAllString(reason, ":")
}
