package e2e

import (
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// TestAlteration checks the comparison that tells a Postfix change to a
// case apart from what Postfix and the milter are expected to add, so
// that TestPostfixCases can neither miss a masked case nor flag a clean
// one.
func TestAlteration(t *testing.T) {
	f := func(name, value string) testcase.Field { return testcase.Field{Name: name, Value: value} }
	from := f("From", " CEO <ceo@example.test>")
	to := f("To", " <sink@lab.test>")
	subj := f("Subject", " hello\r\n world")
	forged := f("Authentication-Results", " lab.test; dmarc=pass header.from=example.test")
	foreign := f("Authentication-Results", " other.example; dmarc=pass")
	received := f("Received", " from out.example.net (out.example.net [192.0.2.1])\n\tby mx.lab.test (Postfix) with ESMTP id 4AB12C0FFEE\n\tfor <sink@lab.test>; Thu,  3 Dec 2026 21:00:00 +0000 (UTC)")
	ours := f("Authentication-Results", " lab.test;\n\tdmarc=fail header.from=example.test")
	added := []testcase.Field{f("Return-Path", " <b@example.net>"), f("X-Original-To", " sink@lab.test"),
		f("Delivered-To", " sink@lab.test"), ours, received}

	tests := []struct {
		name       string
		submitted  []testcase.Field
		delivered  []testcase.Field
		wantChange string // "" for none, else a substring of the report
	}{
		{"unchanged, folding as LF", []testcase.Field{from, to, subj},
			append(append([]testcase.Field{}, added...), from, to, f("Subject", " hello\n world")), ""},
		{"forged A-R removed, foreign kept", []testcase.Field{forged, foreign, from, to},
			append(append([]testcase.Field{}, added...), foreign, from, to), ""},
		{"forged A-R left in place (Check's business)", []testcase.Field{forged, from},
			append(append([]testcase.Field{}, added...), forged, from), ""},
		{"From added", []testcase.Field{to, subj},
			append(append([]testcase.Field{}, added...), to, subj, f("From", " b@example.net")), `"from: b@example.net" was not submitted`},
		{"From rewritten", []testcase.Field{f("From", " Billing <billing>"), to},
			append(append([]testcase.Field{}, added...), f("From", " Billing <billing@lab.test>"), to), "was not submitted"},
		{"field dropped", []testcase.Field{from, to, subj},
			append(append([]testcase.Field{}, added...), from, subj), `"to: <sink@lab.test>" missing`},
		{"fields reordered", []testcase.Field{from, to},
			append(append([]testcase.Field{}, added...), to, from), "missing"},
		{"foreign Received is not Postfix's", []testcase.Field{from},
			[]testcase.Field{f("Received", " by relay.example.net with ESMTP id X"), from}, "was not submitted"},
		{"foreign A-R added", []testcase.Field{from},
			[]testcase.Field{foreign, from}, "was not submitted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := alteration(tc.submitted, tc.delivered)
			switch {
			case tc.wantChange == "" && got != "":
				t.Errorf("reported a change: %s", got)
			case tc.wantChange != "" && !strings.Contains(got, tc.wantChange):
				t.Errorf("report %q, want it to contain %q", got, tc.wantChange)
			}
		})
	}
}
