package testcase

import (
	"fmt"
	"sort"
	"strings"
	"testing"
)

func TestParseAR(t *testing.T) {
	tests := []struct {
		name, in string
		id       string
		want     string // "method=result[ k=v...]" joined by " | "
		wantErr  bool
	}{
		{"plain", "lab.test; spf=pass smtp.mailfrom=a.test; dmarc=fail header.from=A.test",
			"lab.test", "spf=pass smtp.mailfrom=a.test | dmarc=fail header.from=A.test", false},
		{"version and comments with ;", "lab.test 1; dkim=pass (2048-bit key; unprotected) header.d=x.test header.s=s1;\r\n\tdmarc=pass (p=reject; dis=none) header.from=x.test",
			"lab.test", "dkim=pass header.d=x.test header.s=s1 | dmarc=pass header.from=x.test", false},
		{"CFWS before id", "  (comment) lab.test; none", "lab.test", "", false},
		{"quoted id and value", `"lab.test"; dkim=fail reason="bad signature; really" header.d=x.test`,
			"lab.test", "dkim=fail header.d=x.test reason=bad signature; really", false},
		{"method version, case", "Lab.Test; DMARC/1=PASS Header.From=x.test", "Lab.Test", "dmarc=pass header.from=x.test", false},
		{"nested comment", "lab.test; spf=pass (a (b; c) d) smtp.mailfrom=y.test", "lab.test", "spf=pass smtp.mailfrom=y.test", false},
		{"LF folding", "lab.test;\n dmarc=none\n header.from=z.test", "lab.test", "dmarc=none header.from=z.test", false},
		{"no authserv-id", "spf=pass smtp.mailfrom=a.test; dkim=none", "", "", true},
		{"empty", "  ", "", "", true},
		{"unterminated comment", "lab.test; spf=pass (oops", "", "", true},
		{"unterminated quote", `lab.test; dkim=fail reason="x`, "", "", true},
		{"junk between", "lab.test; ; = ;spf= ; dkim=pass", "lab.test", "dkim=pass", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, res, err := parseAR(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if id != tt.id {
				t.Errorf("id = %q, want %q", id, tt.id)
			}
			if got := formatResults(res); got != tt.want {
				t.Errorf("results = %q, want %q", got, tt.want)
			}
		})
	}
}

func formatResults(rs []arResult) string {
	var parts []string
	for _, r := range rs {
		s := r.Method + "=" + r.Result
		keys := make([]string, 0, len(r.Props))
		for k := range r.Props {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			s += fmt.Sprintf(" %s=%s", k, r.Props[k])
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " | ")
}

func TestParseARHostile(t *testing.T) {
	for _, in := range []string{
		strings.Repeat("(", 100000),
		strings.Repeat("a=b;", 100000),
		"lab.test; " + strings.Repeat(`"`, 3),
		"\x00\xff; x=y",
		strings.Repeat("\\", 1000),
	} {
		_, _, _ = parseAR(in) // must return, not panic or hang
	}
	if _, _, err := parseAR("lab.test; " + strings.Repeat("a=b;", 10000)); err == nil {
		t.Error("no error for a value with far too many tokens")
	}
}

func FuzzParseAR(f *testing.F) {
	f.Add("lab.test; dkim=pass (2048-bit key; unprotected) header.d=x.test")
	f.Add(`x; a="b\"c" (d\)e)`)
	f.Fuzz(func(t *testing.T, s string) {
		id, res, err := parseAR(s)
		if err == nil && id == "" {
			t.Error("empty authserv-id without error")
		}
		for _, r := range res {
			if r.Method == "" || r.Props == nil {
				t.Errorf("incomplete result %+v", r)
			}
		}
	})
}
