package auth

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

func TestParseAddressList(t *testing.T) {
	mb := func(display, local, dom string) Mailbox { return Mailbox{Display: display, Local: local, Domain: dom} }
	tests := []struct {
		name    string
		in      string
		want    []Mailbox
		wantErr bool
	}{
		{"addr-spec", "a@b.test", []Mailbox{mb("", "a", "b.test")}, false},
		{"name-addr", "Alice <alice@x.test>", []Mailbox{mb("Alice", "alice", "x.test")}, false},
		{"case034 two mailboxes", `"A" <a@mf-ok.test>, "B" <b@mf-bad.test>`,
			[]Mailbox{mb("A", "a", "mf-ok.test"), mb("B", "b", "mf-bad.test")}, false},
		{"case055 uppercase", "Alice <ALICE@UPPER-CASE.TEST>", []Mailbox{mb("Alice", "ALICE", "upper-case.test")}, false},
		{"case057 trailing dot", "CEO <ceo@trailing-dot.test.>", []Mailbox{mb("CEO", "ceo", "trailing-dot.test")}, false},
		{"trailing dot addr-spec", "A@Example.TEST.", []Mailbox{mb("", "A", "example.test")}, false},
		{"trailing ideographic full stop", "CEO <ceo@bank.test\u3002>", []Mailbox{mb("CEO", "ceo", "bank.test")}, false},
		{"trailing fullwidth full stop addr-spec", "ceo@Bank\uff0eTest\uff0e", []Mailbox{mb("", "ceo", "bank.test")}, false},
		{"trailing halfwidth ideographic full stop", "<ceo@bank.test\uff61>", []Mailbox{mb("", "ceo", "bank.test")}, false},
		{"case058 a-label", "Muenchen <info@xn--mnchen-3ya.test>", []Mailbox{mb("Muenchen", "info", "xn--mnchen-3ya.test")}, false},
		{"case060 u-label", "Zürich <info@zürich.test>", []Mailbox{mb("Zürich", "info", "xn--zrich-kva.test")}, false},
		{"smtputf8 local part", "<jörg@example.test>", []Mailbox{mb("", "jörg", "example.test")}, false},
		{"case068 address in display name", `"ceo@display-bank.test" <x@display-attacker.test>`,
			[]Mailbox{mb("ceo@display-bank.test", "x", "display-attacker.test")}, false},
		{"case102 same domain", "Sales <sales@mfs102.test>, Billing <billing@mfs102.test>",
			[]Mailbox{mb("Sales", "sales", "mfs102.test"), mb("Billing", "billing", "mfs102.test")}, false},
		{"case107 empty domain", "Billing <billing@>", nil, true},
		{"case108 group", "Team: a@grp108.test, b@grp108-team.test;",
			[]Mailbox{mb("", "a", "grp108.test"), mb("", "b", "grp108-team.test")}, false},
		{"case110 quoted local part with angle brackets", `"Someone <someone@qlp110-other.test>"@qlp110.test`,
			[]Mailbox{mb("", "Someone <someone@qlp110-other.test>", "qlp110.test")}, false},
		{"quoted local part with comma and at", `"a,b@c"@real.test`, []Mailbox{mb("", "a,b@c", "real.test")}, false},
		{"case111 comma in display name", `"Billing, Accounts" <billing@dnc111.test>`,
			[]Mailbox{mb("Billing, Accounts", "billing", "dnc111.test")}, false},
		{"case201 trailing space in angle", "<ceo@tspace201.test >", []Mailbox{mb("", "ceo", "tspace201.test")}, false},
		{"spaces everywhere in angle", "< ceo @ tspace.test >", []Mailbox{mb("", "ceo", "tspace.test")}, false},
		{"escaped quote and comma in display", `"a\"b, <x@evil.test>" <real@dom.test>`,
			[]Mailbox{mb(`a"b, <x@evil.test>`, "real", "dom.test")}, false},
		{"address in comment", "(x@evil.example) real@dom.test", []Mailbox{mb("", "real", "dom.test")}, false},
		{"comment after address", "real@dom.test (x@evil.example)", []Mailbox{mb("", "real", "dom.test")}, false},
		{"nested comment", "((a@evil.test) (b)) <real@dom.test> (c (d))", []Mailbox{mb("", "real", "dom.test")}, false},
		{"escaped paren in comment", `(a\) x@evil.test) real@dom.test`, []Mailbox{mb("", "real", "dom.test")}, false},
		{"empty group", "undisclosed-recipients:;", nil, false},
		{"empty group with space", "undisclosed-recipients: ;", nil, false},
		{"group without semicolon", "Team: a@x.test", []Mailbox{mb("", "a", "x.test")}, false},
		{"group then mailbox", "Team: a@x.test;, b@y.test", []Mailbox{mb("", "a", "x.test"), mb("", "b", "y.test")}, false},
		{"nested group", "Outer: Inner: a@x.test;;", nil, true},
		{"obs route", "<@a.test,@b.test:user@dom.test>", []Mailbox{mb("", "user", "dom.test")}, false},
		{"obs route with display", "Joe <@relay.test:joe@dom.test>", []Mailbox{mb("Joe", "joe", "dom.test")}, false},
		{"unterminated route", "<@a.test,@b.test user@dom.test>", nil, true},
		{"obs local part", `"john".doe@dom.test`, []Mailbox{mb("", "john.doe", "dom.test")}, false},
		{"obs local part cfws", "john . doe @ dom.test", []Mailbox{mb("", "john.doe", "dom.test")}, false},
		{"obs domain with comment", "a@bank(x.evil.test).test", []Mailbox{mb("", "a", "bank.test")}, false},
		{"obs domain with space", "a@bank .test", []Mailbox{mb("", "a", "bank.test")}, false},
		{"obs domain spaces everywhere", "CEO @ Bank . Test", []Mailbox{mb("", "CEO", "bank.test")}, false},
		{"obs domain folded", "Joe <joe@bank\r\n .test>", []Mailbox{mb("Joe", "joe", "bank.test")}, false},
		{"obs domain trailing dot with space", "a@bank.test .", []Mailbox{mb("", "a", "bank.test")}, false},
		{"obs phrase with dot", "John Q. Public <jqp@dom.test>", []Mailbox{mb("John Q . Public", "jqp", "dom.test")}, false},
		{"obs empty list elements", ", ,a@x.test,,", []Mailbox{mb("", "a", "x.test")}, false},
		{"encoded word display not decoded into address", "=?utf-8?B?Y2VvQGJhbmsudGVzdA==?= <x@attacker.test>",
			[]Mailbox{mb("ceo@bank.test", "x", "attacker.test")}, false},
		{"encoded word with at is not an address", "=?utf-8?q?ceo@bank.test?= <x@attacker.test>", nil, true},
		{"folded LF", "Alice\n <alice@x.test>", []Mailbox{mb("Alice", "alice", "x.test")}, false},
		{"folded CRLF", "Alice\r\n\t<alice@x.test>,\r\n Bob <bob@y.test>",
			[]Mailbox{mb("Alice", "alice", "x.test"), mb("Bob", "bob", "y.test")}, false},
		{"folded inside quoted", "\"Ali\r\n ce\" <alice@x.test>", []Mailbox{mb("Ali ce", "alice", "x.test")}, false},
		{"leading space from milter", " Alice <alice@x.test>", []Mailbox{mb("Alice", "alice", "x.test")}, false},
		{"domain literal", "a@[192.0.2.1]", []Mailbox{mb("", "a", "")}, false},
		{"domain literal in angle", "A <a@[IPv6:2001:db8::1]>", []Mailbox{mb("A", "a", "")}, false},
		{"two addresses no comma", "x@evil.test <real@bank.test>", nil, true},
		{"garbage after address", "real@bank.test garbage", nil, true},
		{"bare word", "undisclosed-recipients", nil, true},
		{"display without address", "Alice", nil, true},
		{"empty", "", nil, false},
		{"only spaces", "  \r\n ", nil, false},
		{"empty angle", "<>", nil, true},
		{"no at", "<alice>", nil, true},
		{"two words local part", "john doe@dom.test", nil, true},
		{"unterminated quote", `"a <a@x.test>`, nil, true},
		{"unterminated comment", "a@x.test (", nil, true},
		{"unterminated comment keeps earlier", "a@x.test, b@y.test (", []Mailbox{mb("", "a", "x.test")}, true},
		{"unterminated angle", "A <a@x.test", nil, true},
		{"unterminated literal", "a@[1.2.3.4", nil, true},
		{"double at", "a@b@c.test", nil, true},
		{"control character", "a@x.test\x00", nil, true},
		{"stray backslash", `a\b@x.test`, nil, true},
		{"stray close paren", "a@x.test)", nil, true},
		{"double dot domain", "a@x..test", nil, true},
		{"invalid u-label", "a@\xff.test", []Mailbox{mb("", "a", "")}, false},
		{"underscore label", "a@_x.test", []Mailbox{mb("", "a", "_x.test")}, false},
		{"deep comment", strings.Repeat("(", maxCommentDepth+1) + strings.Repeat(")", maxCommentDepth+1) + "a@x.test", nil, true},
		{"ok comment depth", strings.Repeat("(", maxCommentDepth) + strings.Repeat(")", maxCommentDepth) + "a@x.test",
			[]Mailbox{mb("", "a", "x.test")}, false},
		{"too long", "a@x.test (" + strings.Repeat("x", MaxFromLength) + ")", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAddressList(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestAuthorDomains(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		domains []string
		fields  int
		mbs     int
		err     error
	}{
		{"none", nil, nil, 0, 0, ErrNoFrom},
		{"one", []string{"a@x.test"}, []string{"x.test"}, 1, 1, nil},
		{"case034", []string{`"A" <a@mf-ok.test>, "B" <b@mf-bad.test>`}, []string{"mf-ok.test", "mf-bad.test"}, 1, 2, nil},
		{"case035 two fields", []string{"Ok <ok@tf-ok.test>", "Boss <boss@tf-bad.test>"}, []string{"tf-ok.test", "tf-bad.test"}, 2, 2, nil},
		{"case102 distinct", []string{"Sales <sales@mfs102.test>, Billing <billing@MFS102.test.>"}, []string{"mfs102.test"}, 1, 2, nil},
		{"case107 empty domain", []string{"Billing <billing@>"}, nil, 1, 0, ErrNoAuthorDomain},
		{"case108 group", []string{"Team: a@grp108.test, b@grp108-team.test;"}, []string{"grp108.test", "grp108-team.test"}, 1, 2, nil},
		{"empty group", []string{"undisclosed-recipients:;"}, nil, 1, 0, ErrNoAuthorDomain},
		{"domain literal", []string{"a@[192.0.2.1]"}, nil, 1, 1, ErrNoAuthorDomain},
		{"literal next to domain", []string{"a@[192.0.2.1], b@x.test"}, []string{"x.test"}, 1, 2, ErrNoAuthorDomain},
		{"one good one broken field", []string{"a@x.test", "garbage"}, []string{"x.test"}, 2, 1, ErrNoAuthorDomain},
		{"empty value", []string{""}, nil, 1, 0, ErrNoAuthorDomain},
		{"case060 u-label", []string{"Zürich <info@zürich.test>"}, []string{"xn--zrich-kva.test"}, 1, 1, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			info, err := AuthorDomains(tc.in)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if !reflect.DeepEqual(info.Domains, tc.domains) || info.Fields != tc.fields || info.Mailboxes != tc.mbs {
				t.Errorf("got %+v, want domains %v fields %d mailboxes %d", info, tc.domains, tc.fields, tc.mbs)
			}
		})
	}
}

func TestAuthorDomainsManyFields(t *testing.T) {
	values := make([]string, 1000)
	for i := range values {
		values[i] = "a@x.test"
	}
	info, err := AuthorDomains(values)
	if err != nil || info.Fields != 1000 || info.Mailboxes != maxFromFields {
		t.Fatalf("got %+v, %v", info, err)
	}
}

// domainInInput is the fuzz invariant: a returned domain was written in
// the field (ignoring case, one trailing dot, and the CFWS that obs-domain
// allows between labels) or is the A-label of what was written.
func domainInInput(in, d string) bool {
	in = stripCFWS(in)
	lin := strings.ToLower(in)
	if strings.Contains(lin, d) {
		return true
	}
	for i := 0; i < len(in); i++ {
		for j := i + 1; j <= len(in) && j-i <= 253*4; j++ {
			if n, err := domain.Normalize(in[i:j]); err == nil && n == d && !strings.ContainsAny(in[i:j], " \t\r\n") {
				return true
			}
		}
	}
	return false
}

func FuzzParseAddressList(f *testing.F) {
	for _, s := range []string{
		"a@b.test", `"A" <a@mf-ok.test>, "B" <b@mf-bad.test>`, "Team: a@x.test, b@y.test;",
		"undisclosed-recipients:;", `"a\"b, <x@evil>" <real@dom.test>`, "(x@evil.example) real@dom.test",
		"<@a,@b:user@dom.test>", "A@Example.TEST.", "Zürich <info@zürich.test>", `"Someone <s@o.test>"@q.test`,
		"<a@b.test >", "a@[192.0.2.1]", "=?utf-8?B?Y2Vv?= <x@y.test>", "Alice\r\n <alice@x.test>",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		mbs, _ := ParseAddressList(in)
		for _, mb := range mbs {
			if mb.Domain == "" {
				continue
			}
			n, err := domain.Normalize(mb.Domain)
			if err != nil || n != mb.Domain {
				t.Fatalf("domain %q not normalised (%q, %v)", mb.Domain, n, err)
			}
			if !utf8.ValidString(mb.Domain) || !domainInInput(in, mb.Domain) {
				t.Fatalf("domain %q does not appear in %q", mb.Domain, in)
			}
		}
		_, _ = AuthorDomains([]string{in, in})
	})
}

// stripCFWS drops whitespace and comments outside quoted-strings, roughly
// as the lexer does (RFC 5322 §3.2.2).
func stripCFWS(in string) string {
	var b strings.Builder
	depth, quoted := 0, false
	for i := 0; i < len(in); i++ {
		c := in[i]
		switch {
		case c == '\\' && (depth > 0 || quoted):
			if depth == 0 && i+1 < len(in) {
				b.WriteByte(c)
				b.WriteByte(in[i+1])
			}
			i++
		case depth > 0:
			if c == '(' {
				depth++
			} else if c == ')' {
				depth--
			}
		case quoted:
			b.WriteByte(c)
			if c == '"' {
				quoted = false
			}
		case c == '"':
			quoted = true
			b.WriteByte(c)
		case c == '(':
			depth = 1
		case c == ' ', c == '\t', c == '\r', c == '\n':
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
