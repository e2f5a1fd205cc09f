package auth

import "strings"

// ARResults reads the method results of an incoming Authentication-Results
// value: the authserv-id and, per method, the results in field order
// (RFC 8601 §2.2: resinfo = methodspec [reasonspec] *propspec, separated
// by ";"; comments anywhere). Properties are skipped. It is for trusting
// a named upstream's verdict (arc=pass), so anything it cannot read is
// left out rather than guessed; ok is false without an authserv-id.
func ARResults(value string) (id string, results map[string][]string, ok bool) {
	id, ok = AuthServID(value)
	if !ok {
		return "", nil, false
	}
	results = map[string][]string{}
	for _, part := range splitResinfo(value)[1:] {
		toks := arTokens(part)
		// method [ "/" version ] "=" result
		if len(toks) < 3 {
			continue
		}
		method := strings.ToLower(toks[0])
		i := 1
		if toks[i] == "/" && len(toks) > i+2 {
			i += 2
		}
		if toks[i] != "=" || i+1 >= len(toks) || !isKeyword(method) {
			continue
		}
		if len(results) < 64 {
			results[method] = append(results[method], strings.ToLower(toks[i+1]))
		}
	}
	return id, results, true
}

// splitResinfo splits at ";" outside comments and quoted-strings.
func splitResinfo(s string) []string {
	var parts []string
	depth, start, quoted := 0, 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			i++
		case quoted:
			if c == '"' {
				quoted = false
			}
		case c == '"' && depth == 0:
			quoted = true
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case c == ';' && depth == 0:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

// arTokens returns the tokens, quoted-strings and the specials "/" and "="
// of one resinfo, without CFWS; it stops at the first property's ".".
func arTokens(s string) []string {
	var toks []string
	for i := 0; i < len(s) && len(toks) < 8; {
		var ok bool
		if i, ok = skipCFWS(s, i); !ok || i >= len(s) {
			break
		}
		switch c := s[i]; {
		case c == '/' || c == '=':
			toks = append(toks, string(c))
			i++
		case c == '"':
			v, end, ok := quotedString(s, i)
			if !ok {
				return toks
			}
			toks = append(toks, v)
			i = end
		case isTokenChar(c) || c == '.':
			j := i
			for j < len(s) && (isTokenChar(s[j]) || s[j] == '.') {
				j++
			}
			toks = append(toks, s[i:j])
			i = j
		default:
			i++
		}
	}
	return toks
}
