package testcase

import (
	"errors"
	"fmt"
	"strings"
)

// Outcome is what a driver observed for one case.
type Outcome struct {
	SMTP  string // accept | reject | tempfail
	Queue string // delivered | hold | none
	Reply string // the SMTP reply text, if any
	// Deferred are the recipients refused at RCPT while others went on.
	Deferred []string
	// Header is the delivered header after the milter's changes; nil if
	// nothing was accepted.
	Header []Field
	// Submitted is the header as sent, so that A-R fields that came with
	// the message are not counted as the milter's.
	Submitted []Field
}

// Check judges o against the expectations for mode (ModeRFC7489 or
// ModeRFC9989) with the milter's authserv-id. It returns nil if any
// alternative matches, otherwise an error naming the first mismatch of
// every alternative. Advisory mismatches come back as warnings and never
// make err non-nil.
//
//lint:ignore ST1008 the order (verdict, warnings) is the agreed driver API
func (c *Case) Check(mode string, authservID string, o Outcome) (err error, advisory []string) {
	exps, err := c.ExpectFor(mode)
	if err != nil {
		return err, nil
	}
	if !smtpValues.Has(o.SMTP) {
		return fmt.Errorf("case %s: outcome smtp %q is not one of %v", c.ID, o.SMTP, smtpValues), nil
	}
	if !queueValues.Has(o.Queue) {
		return fmt.Errorf("case %s: outcome queue %q is not one of %v", c.ID, o.Queue, queueValues), nil
	}
	if authservID == "" {
		return errors.New("empty authserv-id"), nil
	}
	ours, oursErr := ownResults(o, authservID)

	for i, alt := range c.Advisory {
		if m := alt.mismatch(o, ours, oursErr, authservID); m != "" {
			advisory = append(advisory, fmt.Sprintf("case %s (%s): advisory %d: %s", c.ID, mode, i, m))
		}
	}
	var why []string
	for i, alt := range exps {
		m := alt.mismatch(o, ours, oursErr, authservID)
		if m == "" {
			return nil, advisory
		}
		why = append(why, fmt.Sprintf("alternative %d: %s", i, m))
	}
	reply := ""
	if o.Reply != "" {
		reply = fmt.Sprintf(" (reply %q)", o.Reply)
	}
	return fmt.Errorf("case %s (%s): got smtp=%s queue=%s%s; %s", c.ID, mode, o.SMTP, o.Queue, reply, strings.Join(why, "; ")), advisory
}

// accepted reports whether anything was delivered, the only time the
// delivered header is judged.
func (o *Outcome) accepted() bool {
	return o.Queue == "delivered" || o.Queue == "hold"
}

// mismatch returns "" if x matches, else the first field that does not.
func (x *Expectation) mismatch(o Outcome, ours []arResult, oursErr error, authservID string) string {
	if x.SMTP != nil && !x.SMTP.Has(o.SMTP) {
		return fmt.Sprintf("smtp %s, want %s", o.SMTP, strings.Join(x.SMTP, "|"))
	}
	if x.Queue != nil && !x.Queue.Has(o.Queue) {
		return fmt.Sprintf("queue %s, want %s", o.Queue, strings.Join(x.Queue, "|"))
	}
	if x.AR != nil && o.accepted() {
		if oursErr != nil {
			return oursErr.Error()
		}
		if m := x.AR.mismatch(ours); m != "" {
			return m
		}
	}
	if x.ForgedARRemoved != nil && *x.ForgedARRemoved && o.accepted() {
		if m := forgedLeft(o, authservID); m != "" {
			return m
		}
	}
	return ""
}

func (a *ARExpect) mismatch(ours []arResult) string {
	for _, m := range []struct {
		method string
		want   StringSet
	}{{"dmarc", a.DMARC}, {"spf", a.SPF}, {"dkim", a.DKIM}} {
		if m.want == nil {
			continue
		}
		var got []string
		for _, r := range ours {
			if r.Method == m.method {
				got = append(got, r.Result)
			}
		}
		if len(got) == 0 && !m.want.Has("absent") {
			return fmt.Sprintf("ar: no %s result written, want %s", m.method, strings.Join(m.want, "|"))
		}
		for _, g := range got {
			if g == "absent" || !m.want.Has(g) {
				return fmt.Sprintf("ar: %s=%s written, want %s", m.method, g, strings.Join(m.want, "|"))
			}
		}
	}
	if a.HeaderFrom != nil {
		for _, r := range ours {
			if r.Method != "dmarc" {
				continue
			}
			hf, ok := r.Props["header.from"]
			if !ok {
				return fmt.Sprintf("ar: dmarc=%s without header.from, want %s", r.Result, strings.Join(a.HeaderFrom, "|"))
			}
			if !a.HeaderFrom.HasFold(hf) {
				return fmt.Sprintf("ar: dmarc header.from=%s, want %s", hf, strings.Join(a.HeaderFrom, "|"))
			}
		}
	}
	return ""
}

// ownResults collects the results of the A-R fields the milter added: the
// delivered fields with our authserv-id, minus those submitted with the
// message (compared after unfolding, one delivered field per submitted
// one, so a duplicate the milter wrote still counts).
func ownResults(o Outcome, authservID string) ([]arResult, error) {
	submitted := map[string]int{}
	for _, f := range o.Submitted {
		if isAR(f.Name) {
			submitted[unfold(f.Value)]++
		}
	}
	var out []arResult
	for _, f := range o.Header {
		if !isAR(f.Name) {
			continue
		}
		v := unfold(f.Value)
		if submitted[v] > 0 {
			submitted[v]--
			continue
		}
		id, res, err := parseAR(v)
		if err != nil {
			// Only a field that could be ours matters; a broken foreign one
			// is ignored like any other authserv-id.
			if strings.HasPrefix(strings.ToLower(v), strings.ToLower(authservID)) {
				return nil, fmt.Errorf("ar: unreadable field %q: %v", truncate(v, 80), err)
			}
			continue
		}
		if strings.EqualFold(id, authservID) {
			out = append(out, res...)
		}
	}
	return out, nil
}

// forgedLeft returns a mismatch if a submitted A-R field carrying our
// authserv-id is still in the delivered header (RFC 8601 §5).
func forgedLeft(o Outcome, authservID string) string {
	delivered := map[string]bool{}
	for _, f := range o.Header {
		if isAR(f.Name) {
			delivered[unfold(f.Value)] = true
		}
	}
	for _, f := range o.Submitted {
		if !isAR(f.Name) {
			continue
		}
		v := unfold(f.Value)
		id, _, err := parseAR(v)
		if err == nil && strings.EqualFold(id, authservID) && delivered[v] {
			return fmt.Sprintf("forged A-R %q still delivered", truncate(v, 80))
		}
	}
	return ""
}

func isAR(name string) bool {
	return strings.EqualFold(strings.TrimRight(name, " \t"), "Authentication-Results")
}
