package testcase

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	cases, _ := loadAll(t)
	hdr := func(fs ...Field) []Field { return fs }
	from := Field{"From", " x@y.test"}
	ar := func(v string) Field { return Field{"Authentication-Results", " " + v} }
	forged053 := ar("lab.test; spf=pass smtp.mailfrom=forged-ar2.test; dkim=pass header.d=forged-ar2.test; dmarc=pass header.from=forged-ar2.test")
	tests := []struct {
		name, id, mode string
		o              Outcome
		wantErr        bool
		wantAdvisory   int
	}{
		{"052 delivered is wrong", "052-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered", Header: hdr(from)}, true, 0},
		{"052 rejected", "052-", ModeRFC9989, Outcome{SMTP: "reject", Queue: "none", Reply: "550 5.7.1 rejected"}, false, 0},
		{"052 tempfail is wrong", "052-", ModeRFC7489, Outcome{SMTP: "tempfail", Queue: "none"}, true, 0},
		{"032 fail open", "032-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Header: hdr(ar("lab.test;\r\n\tdmarc=temperror (DNS) header.from=ServFail.test"), from)}, false, 0},
		{"032 fail closed", "032-", ModeRFC9989, Outcome{SMTP: "tempfail", Queue: "none"}, false, 0},
		{"032 dmarc=none is wrong", "032-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Header: hdr(ar("lab.test; dmarc=none header.from=servfail.test"), from)}, true, 0},
		{"032 wrong header.from", "032-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Header: hdr(ar("lab.test; dmarc=temperror header.from=other.test"), from)}, true, 0},
		{"032 no header.from", "032-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Header: hdr(ar("lab.test; dmarc=temperror"), from)}, true, 0},
		{"032 a second, contradicting dmarc result", "032-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Header: hdr(ar("lab.test; dmarc=temperror header.from=servfail.test"), ar("lab.test; dmarc=pass header.from=servfail.test"), from)}, true, 0},
		{"032 other authserv-id ignored", "032-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Header: hdr(ar("other.example; dmarc=pass header.from=servfail.test"), ar("lab.test; dmarc=temperror header.from=servfail.test"), from)}, false, 0},
		{"032 reject is wrong", "032-", ModeRFC7489, Outcome{SMTP: "reject", Queue: "none"}, true, 0},
		{"032 no A-R at all", "032-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered", Header: hdr(from)}, true, 0},
		{"053 forged field left: passes, advisory warns", "053-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Submitted: hdr(forged053, from),
			Header:    hdr(ar("lab.test; dmarc=fail header.from=forged-ar2.test"), forged053, from)}, false, 1},
		{"053 forged field removed", "053-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Submitted: hdr(forged053, from),
			Header:    hdr(ar("lab.test; dmarc=fail header.from=forged-ar2.test"), from)}, false, 0},
		{"053 the forged pass is not ours", "053-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Submitted: hdr(forged053, from), Header: hdr(forged053, from)}, true, 1},
		{"107 delivered without dmarc", "107-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered", Header: hdr(from)}, false, 1},
		{"107 delivered with dmarc=pass is wrong", "107-", ModeRFC7489, Outcome{SMTP: "accept", Queue: "delivered",
			Header: hdr(ar("lab.test; dmarc=pass header.from=emptydom107.test"), from)}, true, 1},
		{"107 rejected", "107-", ModeRFC7489, Outcome{SMTP: "reject", Queue: "none"}, false, 0},
		{"unknown mode", "052-", "rfc1234", Outcome{SMTP: "reject", Queue: "none"}, true, 0},
		{"bad outcome smtp", "052-", ModeRFC7489, Outcome{SMTP: "rejected", Queue: "none"}, true, 0},
		{"bad outcome queue", "052-", ModeRFC7489, Outcome{SMTP: "reject", Queue: "gone"}, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := findCase(t, cases, tt.id)
			err, adv := c.Check(tt.mode, "lab.test", tt.o)
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if len(adv) != tt.wantAdvisory {
				t.Errorf("advisory = %q, want %d warnings", adv, tt.wantAdvisory)
			}
		})
	}
}

// TestCheckModes uses a case whose expectation differs between the specs
// (216: t=y applies the policy one level below in RFC 9989 only).
func TestCheckModes(t *testing.T) {
	cases, _ := loadAll(t)
	c := findCase(t, cases, "216-")
	if len(c.ExpectRFC9989) == 0 {
		t.Skip("case 216 no longer has expect_rfc9989")
	}
	// The first alternative of each mode must match itself and, for this
	// case, fail the other mode.
	for _, mode := range []string{ModeRFC7489, ModeRFC9989} {
		exp, _ := c.ExpectFor(mode)
		o := outcomeFor(exp[0])
		if err, _ := c.Check(mode, "lab.test", o); err != nil {
			t.Errorf("%s: its own expectation does not pass: %v", mode, err)
		}
		other := ModeRFC9989
		if mode == ModeRFC9989 {
			other = ModeRFC7489
		}
		if err, _ := c.Check(other, "lab.test", o); err == nil {
			t.Errorf("%s outcome %+v also passes %s", mode, o, other)
		}
	}
}

// outcomeFor builds an outcome satisfying x (first value of each field).
func outcomeFor(x Expectation) Outcome {
	o := Outcome{SMTP: x.SMTP[0], Queue: x.Queue[0]}
	if x.AR != nil {
		var parts []string
		if x.AR.DMARC != nil && x.AR.DMARC[0] != "absent" {
			p := "dmarc=" + x.AR.DMARC[0]
			if x.AR.HeaderFrom != nil {
				p += " header.from=" + x.AR.HeaderFrom[0]
			}
			parts = append(parts, p)
		}
		o.Header = []Field{{"Authentication-Results", " lab.test; " + strings.Join(parts, "; ")}}
	}
	return o
}
