package auth

import (
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// AuthServID extracts the authserv-id of an incoming Authentication-Results
// field value (RFC 8601 §2.2: authserv-id = value, a token or a
// quoted-string, optionally followed by a version, with CFWS anywhere).
// Comments nest and may hold ";" and quotes; folding with LF or CRLF is
// whitespace. ok is false when the field has no authserv-id: it is empty,
// starts with ";", starts with a method ("spf=pass ...", as Microsoft
// writes it), or has an unterminated comment or quoted-string.
//
// What follows the id is not checked beyond that: a field that names our
// id and is otherwise malformed is still one to remove. Work is linear in
// the length of value.
func AuthServID(value string) (id string, ok bool) {
	i, ok := skipCFWS(value, 0)
	if !ok || i >= len(value) {
		return "", false
	}
	var end int
	if value[i] == '"' {
		id, end, ok = quotedString(value, i)
		if !ok {
			return "", false
		}
	} else {
		end = i
		for end < len(value) && isTokenChar(value[end]) {
			end++
		}
		id = value[i:end]
	}
	if id == "" {
		return "", false
	}
	next, ok := skipCFWS(value, end)
	if !ok {
		return "", false
	}
	if next < len(value) && value[next] == '=' {
		// "method=result": a resinfo without authserv-id (RFC 8601 §2.2
		// makes the id mandatory; Microsoft omits it).
		return "", false
	}
	return id, true
}

// SameAuthServID reports whether two authserv-ids name the same server.
// Ids are domain names in practice (RFC 8601 §2.5), which compare without
// regard to case (RFC 4343), trailing dot or IDNA form; other ids compare
// case-insensitively. Over-matching only removes more forged fields.
func SameAuthServID(a, b string) bool {
	if strings.EqualFold(a, b) {
		return true
	}
	na, errA := domain.Normalize(a)
	nb, errB := domain.Normalize(b)
	return errA == nil && errB == nil && na == nb
}

// skipCFWS skips whitespace, folding and nested comments (RFC 5322 §3.2.2)
// from i; ok is false for an unterminated comment.
func skipCFWS(s string, i int) (int, bool) {
	depth := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == '\\' && depth > 0:
			i += 2
			continue
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth > 0, c == ' ', c == '\t', c == '\r', c == '\n':
		default:
			return i, true
		}
		i++
	}
	return len(s), depth == 0
}

// quotedString reads the quoted-string starting at s[i] and returns its
// content without quoting (RFC 5322 §3.2.4).
func quotedString(s string, i int) (string, int, bool) {
	var b strings.Builder
	for j := i + 1; j < len(s); j++ {
		switch c := s[j]; c {
		case '"':
			return b.String(), j + 1, true
		case '\\':
			if j+1 < len(s) {
				j++
				b.WriteByte(s[j])
			}
		case '\r', '\n':
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, false
}

// isTokenChar reports an RFC 2045 §5.1 token character: printable US-ASCII
// except tspecials.
func isTokenChar(c byte) bool {
	return c > 0x20 && c < 0x7f && strings.IndexByte(`()<>@,;:\"/[]?=`, c) < 0
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// isKeyword reports an RFC 8601 §2.2 Keyword (RFC 5321 Ldh-str).
func isKeyword(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isDotAtom reports RFC 5322 §3.2.3 dot-atom-text over ASCII atext.
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '.' && (s[i] >= 0x80 || !isAtext(s[i])) {
			return false
		}
	}
	return true
}

// ARProp is one propspec of a result (RFC 8601 §2.3), for example
// {"smtp", "mailfrom", "x.test"}, {"header", "d", "x.test"} or
// {"policy", "dmarc", "reject"} (RFC 9989 adds policy.dmarc).
type ARProp struct{ Type, Property, Value string }

// ARMethod is one resinfo (RFC 8601 §2.2). Reason and Comment are optional.
type ARMethod struct {
	Method, Result, Reason, Comment string
	Props                           []ARProp
}

// arFoldWidth is where FormatAR folds a resinfo that does not fit a line;
// RFC 5322 §2.1.1 asks for lines of at most 78 characters.
const arFoldWidth = 78

// FormatAR returns the value (without "Authentication-Results:") of our
// field: a leading space, the authserv-id, then each resinfo on its own
// line after CRLF + TAB (RFC 5322 §2.2.3 folding), a long resinfo folded
// again between its elements. Without methods the value is
// " id; none" (RFC 8601 §2.2 no-result). Values that are not RFC 2045
// tokens or local-part@domain are quoted (RFC 8601 §2.3 pvalue); comments
// and quoted-strings are escaped and control characters replaced, so no
// input can end the field early. Methods, ptypes or properties that are not
// RFC 8601 Keywords are left out rather than written malformed.
func FormatAR(authservID string, methods []ARMethod) string {
	var b strings.Builder
	b.WriteByte(' ')
	b.WriteString(arValue(authservID))
	n := 0
	for _, m := range methods {
		if !isKeyword(m.Method) || !isKeyword(m.Result) {
			continue
		}
		n++
		b.WriteString(";\r\n\t")
		parts := []string{m.Method + "=" + m.Result}
		if m.Comment != "" {
			parts = append(parts, arComment(m.Comment))
		}
		if m.Reason != "" {
			parts = append(parts, "reason="+quote(m.Reason))
		}
		for _, p := range m.Props {
			if !isKeyword(p.Type) || !isKeyword(p.Property) {
				continue
			}
			parts = append(parts, p.Type+"."+p.Property+"="+pvalue(p.Value))
		}
		col := 8 // a TAB counts as up to eight columns
		for i, part := range parts {
			if i > 0 {
				if col+1+len(part) > arFoldWidth {
					b.WriteString("\r\n\t\t")
					col = 16
				} else {
					b.WriteByte(' ')
					col++
				}
			}
			b.WriteString(part)
			col += len(part)
		}
	}
	if n == 0 {
		b.WriteString("; none")
	}
	return b.String()
}

// arValue writes an RFC 2045 value: a token as is, anything else quoted.
func arValue(s string) string {
	if isToken(s) {
		return s
	}
	return quote(s)
}

// pvalue writes an RFC 8601 §2.3 pvalue: a token, [local-part] "@"
// domain-name unquoted, anything else as a quoted-string.
func pvalue(s string) string {
	if isToken(s) {
		return s
	}
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		local, dom := s[:at], s[at+1:]
		if (local == "" || isDotAtom(local)) && isDotAtom(dom) {
			return s
		}
	}
	return quote(s)
}

// quote writes a quoted-string (RFC 5322 §3.2.4); control characters
// become spaces so the value can neither end the field nor fold it.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// arComment writes a comment (RFC 5322 §3.2.2) with parentheses and
// backslashes escaped.
func arComment(s string) string {
	var b strings.Builder
	b.WriteByte('(')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '(' || c == ')' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte(')')
	return b.String()
}
