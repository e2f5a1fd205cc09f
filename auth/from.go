package auth

import (
	"errors"
	"fmt"
	"mime"
	"strings"
	"unicode/utf8"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// Limits on a From field body. A legitimate From is a few hundred bytes;
// these bounds only stop hostile input from costing time or memory.
const (
	// MaxFromLength bounds one From field value, folding included.
	MaxFromLength = 16 << 10
	// maxCommentDepth bounds nested comments (RFC 5322 §3.2.2 allows
	// nesting without limit; nobody needs more than a few levels).
	maxCommentDepth = 32
	// maxFromFields bounds how many From fields AuthorDomains looks at.
	maxFromFields = 64
)

// Errors of the From parser. AuthorDomains returns them wrapped, so test
// with errors.Is.
var (
	// ErrNoFrom: the message has no From field (RFC 5322 §3.6 requires one).
	ErrNoFrom = errors.New("auth: no From field")
	// ErrNoAuthorDomain: a From field yields no usable Author Domain for at
	// least one of its mailboxes (empty group, domain literal, syntax error).
	ErrNoAuthorDomain = errors.New("auth: From field without usable author domain")
	// ErrFromSyntax: the field body is not an RFC 5322 address-list.
	ErrFromSyntax = errors.New("auth: From syntax error")
	// ErrFromTooLong: the field body exceeds MaxFromLength.
	ErrFromTooLong = errors.New("auth: From field too long")
)

// Mailbox is one address of a From field.
type Mailbox struct {
	Display string // display name, RFC 2047 encoded words decoded where possible; informational only
	Local   string // local-part content, quoted-strings unquoted
	Domain  string // normalised (A-labels, lower case, no trailing dot); "" if none usable
}

// AuthorInfo describes the From fields of one message.
type AuthorInfo struct {
	Domains   []string // distinct usable Author Domains, in order of appearance
	Fields    int      // number of From fields; more than one violates RFC 5322 §3.6
	Mailboxes int      // mailboxes over all fields, group members included
}

// AuthorDomains takes the values of every From field of a message and
// returns the distinct usable Author Domains (RFC 9989 §3.2.x "Author
// Domain"; RFC 7489 §6.6.1). Several fields or several mailboxes are not
// an error: the caller decides (RFC 7489 §6.6.1 leaves it to the receiver).
//
// The error is ErrNoFrom when values is empty, and ErrNoAuthorDomain
// (wrapping the cause) when any field has no mailbox, a syntax error, or a
// mailbox without a usable domain. Domains still holds what was usable, so
// a caller may apply the strictest policy of the domains it did see; it must
// never treat such a message as a DMARC pass.
func AuthorDomains(values []string) (AuthorInfo, error) {
	var info AuthorInfo
	if len(values) == 0 {
		return info, ErrNoFrom
	}
	info.Fields = len(values)
	if len(values) > maxFromFields {
		values = values[:maxFromFields]
	}
	var firstErr error
	seen := make(map[string]bool)
	for i, v := range values {
		mbs, err := ParseAddressList(v)
		info.Mailboxes += len(mbs)
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("%w: From field %d: %w", ErrNoAuthorDomain, i+1, err)
		}
		if err == nil && len(mbs) == 0 && firstErr == nil {
			// An empty group ("undisclosed-recipients:;") names no author.
			firstErr = fmt.Errorf("%w: From field %d has no mailbox", ErrNoAuthorDomain, i+1)
		}
		for _, mb := range mbs {
			if mb.Domain == "" {
				if firstErr == nil {
					firstErr = fmt.Errorf("%w: From field %d: mailbox without usable domain", ErrNoAuthorDomain, i+1)
				}
				continue
			}
			if !seen[mb.Domain] {
				seen[mb.Domain] = true
				info.Domains = append(info.Domains, mb.Domain)
			}
		}
	}
	if firstErr == nil && len(info.Domains) == 0 {
		firstErr = ErrNoAuthorDomain
	}
	return info, firstErr
}

// ParseAddressList parses one From field body (RFC 5322 §3.4, §3.6.2, with
// RFC 6854 groups, the obsolete syntax of RFC 5322 §4.4 and RFC 6532
// UTF-8), as it arrives from the MTA: possibly folded with LF or CRLF.
// It returns every mailbox, group members included.
//
// A mailbox is returned only once the delimiter after it (",", ";" or the
// end) has been seen, so that a syntax error never yields a guessed
// address: `x@evil.test <real@bank.test>` returns no mailbox and an error.
// On error the mailboxes before the fault are returned with it.
func ParseAddressList(value string) ([]Mailbox, error) {
	if len(value) > MaxFromLength {
		return nil, ErrFromTooLong
	}
	p := &addrParser{in: value}
	p.lex()
	return p.parseList()
}

type tokKind uint8

const (
	tAtom    tokKind = iota // 1*atext (RFC 5322 §3.2.3, RFC 6532 §3.2 UTF-8)
	tQuoted                 // quoted-string, text holds the unescaped content
	tLiteral                // domain-literal, text holds it raw
	tSpecial                // one of < > @ , ; : .
	tEOF
	tErr // lexical error; err says why
)

type token struct {
	kind   tokKind
	text   string
	start  int  // byte offset in the input
	end    int  // byte offset after the token
	cfwsBf bool // CFWS (whitespace or comment) directly before it
}

type addrParser struct {
	in   string
	toks []token
	pos  int
	err  error
}

// isAtext reports RFC 5322 §3.2.3 atext, extended by RFC 6532 §3.2 to
// every non-ASCII byte (UTF-8 is checked later, by IDNA, where it matters).
func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c >= 0x80:
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// lex splits the input into tokens, dropping CFWS but remembering where it
// was. On a lexical error the
// token list ends with a tErr token, so everything before it still parses.
func (p *addrParser) lex() {
	in := p.in
	i := 0
	cfws := false
	fail := func(at int, msg string) {
		p.toks = append(p.toks, token{kind: tErr, start: at, end: at})
		p.err = fmt.Errorf("%w: %s at byte %d", ErrFromSyntax, msg, at)
	}
	for i < len(in) {
		c := in[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			// FWS, including folding with LF only as go-milter delivers it.
			cfws = true
			i++
		case c == '(':
			end, ok := skipComment(in, i)
			if !ok {
				fail(i, "unterminated or too deeply nested comment")
				return
			}
			cfws = true
			i = end
		case c == '"':
			var b strings.Builder
			j := i + 1
			closed := false
			for j < len(in) {
				d := in[j]
				if d == '"' {
					closed = true
					j++
					break
				}
				if d == '\\' && j+1 < len(in) {
					b.WriteByte(in[j+1])
					j += 2
					continue
				}
				if d == '\r' || d == '\n' {
					// Folding inside a quoted-string: the CRLF goes, the WSP stays (RFC 5322 §3.2.2).
					j++
					continue
				}
				b.WriteByte(d)
				j++
			}
			if !closed {
				fail(i, "unterminated quoted-string")
				return
			}
			p.toks = append(p.toks, token{kind: tQuoted, text: b.String(), start: i, end: j, cfwsBf: cfws})
			cfws = false
			i = j
		case c == '[':
			j := i + 1
			for j < len(in) && in[j] != ']' && in[j] != '[' {
				if in[j] == '\\' {
					j++ // obs-dtext quoted-pair (RFC 5322 §4.4)
				}
				j++
			}
			if j >= len(in) || in[j] != ']' {
				fail(i, "unterminated domain literal")
				return
			}
			j++
			p.toks = append(p.toks, token{kind: tLiteral, text: in[i:j], start: i, end: j, cfwsBf: cfws})
			cfws = false
			i = j
		case strings.IndexByte("<>@,;:.", c) >= 0:
			p.toks = append(p.toks, token{kind: tSpecial, text: in[i : i+1], start: i, end: i + 1, cfwsBf: cfws})
			cfws = false
			i++
		case isAtext(c):
			j := i
			for j < len(in) && isAtext(in[j]) {
				j++
			}
			p.toks = append(p.toks, token{kind: tAtom, text: in[i:j], start: i, end: j, cfwsBf: cfws})
			cfws = false
			i = j
		default:
			fail(i, fmt.Sprintf("unexpected character %q", c))
			return
		}
	}
	p.toks = append(p.toks, token{kind: tEOF, start: len(in), end: len(in), cfwsBf: cfws})
}

// skipComment returns the offset after the comment starting at in[i]
// (RFC 5322 §3.2.2: comments nest, quoted-pairs escape).
func skipComment(in string, i int) (int, bool) {
	depth := 0
	for j := i; j < len(in); j++ {
		switch in[j] {
		case '\\':
			j++
		case '(':
			depth++
			if depth > maxCommentDepth {
				return 0, false
			}
		case ')':
			depth--
			if depth == 0 {
				return j + 1, true
			}
		}
	}
	return 0, false
}

func (p *addrParser) peek() token { return p.toks[p.pos] }

func (p *addrParser) next() token {
	t := p.toks[p.pos]
	if t.kind != tEOF && t.kind != tErr {
		p.pos++
	}
	return t
}

func (t token) is(s string) bool { return t.kind == tSpecial && t.text == s }

func (p *addrParser) syntax(t token, what string) error {
	if t.kind == tErr {
		return p.err
	}
	return fmt.Errorf("%w: %s at byte %d", ErrFromSyntax, what, t.start)
}

// parseList parses an address-list, accepting the empty elements of
// obs-addr-list (RFC 5322 §4.4).
func (p *addrParser) parseList() ([]Mailbox, error) {
	var out []Mailbox
	for {
		for p.peek().is(",") {
			p.next()
		}
		if p.peek().kind == tEOF {
			return out, nil
		}
		mbs, err := p.parseAddress(true)
		if err != nil {
			return out, err
		}
		t := p.peek()
		switch {
		case t.is(","):
			p.next()
		case t.kind == tEOF:
		default:
			return out, p.syntax(t, "expected ',' after address")
		}
		out = append(out, mbs...)
	}
}

// parseAddress parses a mailbox, or a group when allowGroup (groups do not
// nest, RFC 5322 §3.4).
func (p *addrParser) parseAddress(allowGroup bool) ([]Mailbox, error) {
	words := p.phrase()
	t := p.peek()
	switch {
	case t.is("<"):
		mb, err := p.angleAddr()
		if err != nil {
			return nil, err
		}
		mb.Display = displayName(words)
		return []Mailbox{mb}, nil
	case t.is(":") && allowGroup && len(words) > 0:
		p.next()
		return p.groupList()
	case t.is("@") && len(words) > 0:
		local, ok := localPart(words)
		if !ok {
			return nil, p.syntax(words[0], "invalid local-part")
		}
		p.next()
		d, err := p.domain()
		if err != nil {
			return nil, err
		}
		return []Mailbox{{Local: local, Domain: d}}, nil
	case len(words) == 0:
		return nil, p.syntax(t, "expected an address")
	default:
		return nil, p.syntax(t, "display name without address")
	}
}

// groupList parses the members of a group after its ':' up to and
// including ';' (RFC 5322 §3.4 group, RFC 6854 for From; obs-group-list
// allows empty members). A missing ';' at the end of the field is
// tolerated: the members are unambiguous.
func (p *addrParser) groupList() ([]Mailbox, error) {
	var out []Mailbox
	for {
		for p.peek().is(",") {
			p.next()
		}
		t := p.peek()
		if t.is(";") {
			p.next()
			return out, nil
		}
		if t.kind == tEOF {
			return out, nil
		}
		mbs, err := p.parseAddress(false)
		if err != nil {
			return out, err
		}
		t = p.peek()
		if !t.is(",") && !t.is(";") && t.kind != tEOF {
			return out, p.syntax(t, "expected ',' or ';' in group")
		}
		out = append(out, mbs...)
	}
}

// phrase collects words and the dots of obs-phrase (RFC 5322 §4.1).
func (p *addrParser) phrase() []token {
	var words []token
	for {
		t := p.peek()
		if t.kind == tAtom || t.kind == tQuoted || t.is(".") {
			words = append(words, p.next())
			continue
		}
		return words
	}
}

// angleAddr parses "<" [obs-route] addr-spec ">" (RFC 5322 §3.4, §4.4).
func (p *addrParser) angleAddr() (Mailbox, error) {
	p.next() // "<"
	if p.peek().is("@") {
		// obs-route: "@a,@b:" is routing information, not the address.
		for {
			t := p.next()
			if t.is(":") {
				break
			}
			if t.kind == tEOF || t.kind == tErr || t.is(">") || t.is("<") {
				return Mailbox{}, p.syntax(t, "unterminated route")
			}
		}
	}
	words := p.phrase()
	if len(words) == 0 {
		return Mailbox{}, p.syntax(p.peek(), "empty angle address")
	}
	local, ok := localPart(words)
	if !ok {
		return Mailbox{}, p.syntax(words[0], "invalid local-part")
	}
	if t := p.next(); !t.is("@") {
		return Mailbox{}, p.syntax(t, "expected '@'")
	}
	d, err := p.domain()
	if err != nil {
		return Mailbox{}, err
	}
	if t := p.next(); !t.is(">") {
		return Mailbox{}, p.syntax(t, "expected '>'")
	}
	return Mailbox{Local: local, Domain: d}, nil
}

// domain parses dot-atom / domain-literal / obs-domain after "@" and
// returns the normalised name, or "" when there is no usable DNS name.
func (p *addrParser) domain() (string, error) {
	t := p.next()
	if t.kind == tLiteral {
		// An address literal names a host, not a domain that can publish
		// a DMARC record.
		return "", nil
	}
	if t.kind != tAtom {
		return "", p.syntax(t, "expected domain")
	}
	// RFC 5322 §4.4 obs-domain allows CFWS around every atom, and §4
	// says a receiver MUST accept it: "ceo @ bank . test" is bank.test.
	// Refusing it would let such a From skip the domain's policy wherever
	// a malformed From is accepted; the labels are joined with the CFWS
	// (comments included) left out.
	labels := []string{t.text}
	for p.peek().is(".") {
		p.next()
		n := p.peek()
		if n.kind != tAtom {
			// One trailing dot: the absolute form of the name; treating it
			// as the name keeps a spoofer from evading the policy (case 057).
			break
		}
		p.next()
		labels = append(labels, n.text)
	}
	raw := strings.Join(labels, ".")
	if !utf8.ValidString(raw) {
		// idna maps invalid UTF-8 to U+FFFD, which would invent a name.
		return "", nil
	}
	d, err := domain.Normalize(raw)
	if err != nil {
		return "", nil
	}
	return d, nil
}

// localPart joins dot-atom / quoted-string / obs-local-part words
// (RFC 5322 §3.4.1, §4.4). Two words without a dot between them are not a
// local-part. Empty parts ("a..b", "a.") are tolerated as many MTAs do.
func localPart(words []token) (string, bool) {
	var b strings.Builder
	prevWord := false
	for _, w := range words {
		if w.is(".") {
			b.WriteByte('.')
			prevWord = false
			continue
		}
		if prevWord {
			return "", false
		}
		b.WriteString(w.text)
		prevWord = true
	}
	return b.String(), true
}

var wordDecoder = &mime.WordDecoder{}

// displayName joins the phrase and decodes RFC 2047 encoded words for
// display only; addresses are never taken from it.
func displayName(words []token) string {
	parts := make([]string, 0, len(words))
	for _, w := range words {
		parts = append(parts, w.text)
	}
	s := strings.Join(parts, " ")
	if strings.Contains(s, "=?") {
		if d, err := wordDecoder.DecodeHeader(s); err == nil {
			return d
		}
	}
	return s
}
