package auth

import (
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/authres"
)

func TestAuthServID(t *testing.T) {
	tests := []struct {
		in   string
		id   string
		ok   bool
		name string
	}{
		{"lab.test; spf=pass", "lab.test", true, "plain"},
		{" lab.test;\n\tspf=pass", "lab.test", true, "leading space and LF folding"},
		{"lab.test (comment; with semicolons) 1; spf=pass", "lab.test", true, "comment with semicolon and version"},
		{`"lab.test"; spf=pass`, "lab.test", true, "quoted id"},
		{`"lab\"test"; spf=pass`, `lab"test`, true, "quoted id with escape"},
		{"(c) lab.test; spf=pass", "lab.test", true, "leading comment"},
		{"(c (nested; x) \\) y) lab.test; spf=pass", "lab.test", true, "nested comment with escaped paren"},
		{"\r\n (x)\r\n\tlab.test\r\n ;spf=pass", "lab.test", true, "CRLF folding"},
		{"LAB.TEST; dkim=pass", "LAB.TEST", true, "upper case"},
		{"lab.test.evil; dkim=pass", "lab.test.evil", true, "longer name"},
		{"lab.test", "lab.test", true, "id only"},
		{"lab.test 1", "lab.test", true, "id and version only"},
		{"lab.test spf=pass", "lab.test", true, "missing semicolon still names the id"},
		{"mx.google.com; spf=pass", "mx.google.com", true, "other id"},
		{"; spf=pass", "", false, "missing id"},
		{"spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=x.test; dkim=none", "", false, "microsoft style"},
		{"spf = pass smtp.mailfrom=x.test", "", false, "method with CFWS before ="},
		{"", "", false, "empty"},
		{"   \r\n ", "", false, "only whitespace"},
		{"(unterminated lab.test; spf=pass", "", false, "unbalanced comment"},
		{`"lab.test; spf=pass`, "", false, "unbalanced quote"},
		{"lab.test (unterminated", "", false, "unbalanced comment after id"},
		{`""; spf=pass`, "", false, "empty quoted id"},
		{"(" + strings.Repeat("(", 10000) + strings.Repeat(")", 10001) + " lab.test; x=y", "lab.test", true, "deep nesting"},
		{"(" + strings.Repeat("x;", 100000) + ") lab.test; x=y", "lab.test", true, "huge comment"},
		{strings.Repeat("(", 100000), "", false, "huge unbalanced"},
		{"lab.test\\", "lab.test", true, "backslash after id"},
		{"(\\", "", false, "escape at end of comment"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, ok := AuthServID(tc.in)
			if id != tc.id || ok != tc.ok {
				t.Errorf("AuthServID(%.60q) = %q, %v; want %q, %v", tc.in, id, ok, tc.id, tc.ok)
			}
		})
	}
}

func TestSameAuthServID(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"lab.test", "lab.test", true},
		{"LAB.Test", "lab.test", true},
		{"lab.test.", "lab.test", true},
		{"zürich.test", "xn--zrich-kva.test", true},
		{"lab.test.evil", "lab.test", false},
		{"lab.tes", "lab.test", false},
		{"", "lab.test", false},
		{"not a domain", "NOT A DOMAIN", true},
	}
	for _, tc := range tests {
		if got := SameAuthServID(tc.a, tc.b); got != tc.want {
			t.Errorf("SameAuthServID(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestFormatAR(t *testing.T) {
	full := []ARMethod{
		{Method: "spf", Result: "pass", Props: []ARProp{{"smtp", "mailfrom", "x.test"}}},
		{Method: "dkim", Result: "pass", Props: []ARProp{{"header", "d", "x.test"}, {"header", "s", "sel"}, {"header", "b", "AbCdEf12"}}},
		{Method: "dmarc", Result: "pass", Comment: "p=reject", Props: []ARProp{{"header", "from", "x.test"}, {"policy", "dmarc", "reject"}}},
	}
	tests := []struct {
		name    string
		id      string
		methods []ARMethod
		want    string
	}{
		{"example", "lab.test", full,
			" lab.test;\r\n\tspf=pass smtp.mailfrom=x.test;\r\n\tdkim=pass header.d=x.test header.s=sel header.b=AbCdEf12;\r\n\tdmarc=pass (p=reject) header.from=x.test policy.dmarc=reject"},
		{"none", "lab.test", nil, " lab.test; none"},
		{"only invalid methods", "lab.test", []ARMethod{{Method: "", Result: "pass"}, {Method: "spf", Result: "pa ss"}}, " lab.test; none"},
		{"quoted id", "lab test", nil, ` "lab test"; none`},
		{"values quoted", "lab.test", []ARMethod{{Method: "dkim", Result: "fail", Reason: "body hash did not verify",
			Props: []ARProp{{"header", "b", "ab/c+d="}, {"header", "i", ""}, {"header", "i", "@x.test"}}}},
			" lab.test;\r\n\tdkim=fail reason=\"body hash did not verify\" header.b=\"ab/c+d=\"\r\n\t\theader.i=\"\" header.i=@x.test"},
		{"address unquoted", "lab.test", []ARMethod{{Method: "spf", Result: "pass", Props: []ARProp{{"smtp", "mailfrom", "a.b+c@x.test"}}}},
			" lab.test;\r\n\tspf=pass smtp.mailfrom=a.b+c@x.test"},
		{"hostile values", "lab.test", []ARMethod{{Method: "spf", Result: "fail", Comment: "a) b\r\nX-Evil: 1 (\\",
			Props: []ARProp{{"smtp", "mailfrom", "\"x\"\r\nX-Evil: y@x.test"}, {"bad type", "p", "v"}}}},
			" lab.test;\r\n\tspf=fail (a\\) b  X-Evil: 1 \\(\\\\)\r\n\t\tsmtp.mailfrom=\"\\\"x\\\"  X-Evil: y@x.test\""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := FormatAR(tc.id, tc.methods)
			if got != tc.want {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
			checkFolding(t, got)
		})
	}
}

// checkFolding asserts RFC 5322 §2.2.3 folding: every line break is CRLF
// followed by WSP, and no line is longer than 78 characters when the
// parts fit.
func checkFolding(t *testing.T, v string) {
	t.Helper()
	lines := strings.Split(v, "\r\n")
	for i, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			t.Errorf("bare CR or LF in %q", l)
		}
		if i > 0 && (l == "" || (l[0] != '\t' && l[0] != ' ')) {
			t.Errorf("continuation line %q does not start with WSP", l)
		}
		if len(l)+8 > 998 {
			t.Errorf("line too long: %d", len(l))
		}
	}
}

func TestFormatARFoldsLongResinfo(t *testing.T) {
	m := ARMethod{Method: "dkim", Result: "pass", Reason: strings.Repeat("r", 30)}
	for i := 0; i < 10; i++ {
		m.Props = append(m.Props, ARProp{"header", "d", "sub" + strings.Repeat("x", i) + ".example.test"})
	}
	v := FormatAR("lab.test", []ARMethod{m})
	checkFolding(t, v)
	for _, l := range strings.Split(v, "\r\n") {
		if w := len(strings.TrimLeft(l, "\t")) + 8*(len(l)-len(strings.TrimLeft(l, "\t"))); w > arFoldWidth {
			t.Errorf("line wider than %d: %q", arFoldWidth, l)
		}
	}
}

func TestFormatARRoundTrip(t *testing.T) {
	methods := []ARMethod{
		{Method: "spf", Result: "pass", Props: []ARProp{{"smtp", "mailfrom", "x.test"}}},
		{Method: "dkim", Result: "pass", Props: []ARProp{{"header", "d", "x.test"}, {"header", "s", "sel"}, {"header", "b", "AbCdEf12"}}},
		{Method: "dmarc", Result: "fail", Props: []ARProp{{"header", "from", "x.test"}, {"policy", "dmarc", "reject"}}},
	}
	for _, id := range []string{"lab.test", "LAB.TEST", "mx-1.lab.test"} {
		v := FormatAR(id, methods)
		got, ok := AuthServID(v)
		if !ok || got != id {
			t.Errorf("AuthServID(FormatAR(%q)) = %q, %v", id, got, ok)
		}
		gid, results, err := authres.Parse(strings.TrimSpace(v))
		if err != nil || gid != id || len(results) != 3 {
			t.Fatalf("authres.Parse = %q, %d results, %v", gid, len(results), err)
		}
		spf, ok1 := results[0].(*authres.SPFResult)
		dkim, ok2 := results[1].(*authres.DKIMResult)
		dmarc, ok3 := results[2].(*authres.DMARCResult)
		if !ok1 || !ok2 || !ok3 || spf.Value != authres.ResultPass || spf.From != "x.test" ||
			dkim.Value != authres.ResultPass || dkim.Domain != "x.test" ||
			dmarc.Value != authres.ResultFail || dmarc.From != "x.test" {
			t.Errorf("round trip mismatch: %#v %#v %#v", results[0], results[1], results[2])
		}
	}
	if _, ok := AuthServID(FormatAR("lab.test", nil)); !ok {
		t.Error("no-result field has no id")
	}
}

func FuzzAuthServID(f *testing.F) {
	for _, s := range []string{
		"lab.test; spf=pass", "lab.test (comment; with semicolons) 1; spf=pass", `"lab.test"; spf=pass`,
		"(c) lab.test;", "LAB.TEST;", "lab.test.evil;", "lab.test", "; spf=pass", "((a)(b)) x; y=z",
		`"unterminated`, "(unterminated", "spf=pass smtp.mailfrom=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		id, ok := AuthServID(in)
		if ok != (id != "") {
			t.Fatalf("ok=%v with id %q", ok, id)
		}
		if !ok {
			return
		}
		// Whatever we call the id must be found again in our own header.
		want := []byte(id)
		for i, c := range want {
			if c < 0x20 || c == 0x7f {
				want[i] = ' '
			}
		}
		v := FormatAR(id, []ARMethod{{Method: "spf", Result: "pass"}})
		if got, ok := AuthServID(v); !ok || got != string(want) {
			t.Fatalf("FormatAR(%q) reads back as %q, %v", id, got, ok)
		}
	})
}
