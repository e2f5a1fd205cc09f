package auth

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

// arTokens returns the first max tokens, quoted-strings and specials "/"
// and "=" of one resinfo, without CFWS; "header.from" is one token. A
// quoted-string comes back with a leading '"' before its content, so that
// a quoted "header.from" is never taken for the property name.
func arTokens(s string, max int) []string {
	var toks []string
	for i := 0; i < len(s) && len(toks) < max; {
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
			toks = append(toks, `"`+v)
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
