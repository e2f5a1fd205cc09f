package testcase

import (
	"errors"
	"strings"
)

// arResult is one resinfo of an Authentication-Results field.
type arResult struct {
	Method string            // lower case, version stripped
	Result string            // lower case
	Props  map[string]string // "ptype.property" (lower case) -> value
}

// maxARTokens bounds the work on one hostile A-R value.
const maxARTokens = 4096

// parseAR reads an Authentication-Results value (RFC 8601 §2.2) with
// tolerance for what is found in the wild: comments holding ';' (OpenDKIM's
// "(2048-bit key; unprotected)") and quoted values with spaces. It returns
// the authserv-id and every method=result with its properties. A value
// whose authserv-id cannot be read is an error.
func parseAR(value string) (string, []arResult, error) {
	toks, err := tokenizeAR(unfold(value))
	if err != nil {
		return "", nil, err
	}
	// A value that starts with method=result has no authserv-id (some
	// large providers write such fields); it cannot be anyone's.
	if len(toks) == 0 || toks[0].kind != tokWord || len(toks) > 1 && toks[1].kind == tokEq {
		return "", nil, errors.New("authentication-results: no authserv-id")
	}
	id := toks[0].text
	if id == "" {
		return "", nil, errors.New("authentication-results: empty authserv-id")
	}
	rest := toks[1:]
	// RFC 8601 §2.2: an optional authres-version follows the authserv-id.
	if len(rest) > 0 && rest[0].kind == tokWord && isDigits(rest[0].text) {
		rest = rest[1:]
	}
	var results []arResult
	var cur []token
	flush := func() {
		if r, ok := resinfo(cur); ok {
			results = append(results, r)
		}
		cur = cur[:0]
	}
	for _, t := range rest {
		if t.kind == tokSemi {
			flush()
			continue
		}
		cur = append(cur, t)
	}
	flush()
	return id, results, nil
}

// resinfo turns the tokens between two ';' into a result: the first
// word=value is method=result, later ones are reason and properties.
// "none" (no-result) and anything without '=' yield nothing.
func resinfo(toks []token) (arResult, bool) {
	var r arResult
	for i := 0; i+2 < len(toks); i++ {
		if toks[i].kind != tokWord || toks[i+1].kind != tokEq || toks[i+2].kind != tokWord {
			continue
		}
		k, v := strings.ToLower(toks[i].text), toks[i+2].text
		if r.Method == "" {
			m, _, _ := strings.Cut(k, "/") // RFC 8601 §2.2: method "/" version
			r.Method, r.Result = m, strings.ToLower(v)
			r.Props = map[string]string{}
		} else {
			r.Props[k] = v
		}
		i += 2
	}
	return r, r.Method != ""
}

type tokKind int

const (
	tokWord tokKind = iota
	tokEq
	tokSemi
)

type token struct {
	kind tokKind
	text string
}

// tokenizeAR splits on CFWS (skipping comments, nested, with quoted-pairs),
// '=' and ';'; a quoted-string is one word without its quotes.
func tokenizeAR(s string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(s) {
		if len(toks) > maxARTokens {
			return nil, errors.New("authentication-results: too many tokens")
		}
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			i++
		case c == '(':
			depth := 0
			for ; i < len(s); i++ {
				switch s[i] {
				case '\\':
					i++
				case '(':
					depth++
				case ')':
					depth--
				}
				if depth == 0 {
					break
				}
			}
			if depth != 0 {
				return nil, errors.New("authentication-results: unterminated comment")
			}
			i++
		case c == '"':
			var b strings.Builder
			i++
			closed := false
			for ; i < len(s); i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
					b.WriteByte(s[i])
					continue
				}
				if s[i] == '"' {
					closed = true
					i++
					break
				}
				b.WriteByte(s[i])
			}
			if !closed {
				return nil, errors.New("authentication-results: unterminated quoted string")
			}
			toks = append(toks, token{tokWord, b.String()})
		case c == '=':
			toks = append(toks, token{tokEq, "="})
			i++
		case c == ';':
			toks = append(toks, token{tokSemi, ";"})
			i++
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t\r\n()\";=", rune(s[j])) {
				j++
			}
			toks = append(toks, token{tokWord, s[i:j]})
			i = j
		}
	}
	return toks, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// unfold removes the line breaks of folding (RFC 5322 §2.2.3), keeping
// the whitespace that follows them, and trims the value; both CRLF and the
// LF-only form an MTA hands a milter are handled.
func unfold(v string) string {
	v = strings.ReplaceAll(v, "\r\n", "")
	v = strings.ReplaceAll(v, "\n", "")
	return strings.Trim(v, " \t")
}
