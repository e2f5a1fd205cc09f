package auth

import (
	"errors"
	"fmt"
	"strings"
)

// maxTags bounds the tag-specs of one tag-list: RFC 6376 defines 14
// signature tags and 7 key tags, so anything near this is hostile.
const maxTags = 64

// tagSpec is one tag=value of an RFC 6376 §3.2 tag-list. vStart and vEnd
// are the offsets of the value (without surrounding FWS) in the parsed
// string, so that b= can be emptied in place (RFC 6376 §3.7).
type tagSpec struct {
	name, value  string
	vStart, vEnd int
}

// parseTagList reads an RFC 6376 §3.2 tag-list: tag-specs separated by
// ";", FWS allowed around names and values, tag names ALPHA
// *(ALPHA / DIGIT / "_"), no duplicates. It is lenient only where
// signers in the wild are sloppy and nothing can be misread: empty specs
// (";;") are skipped. Values are returned verbatim (inner FWS kept) and
// never contain ";". On a malformed tag-spec it goes on past it, so that
// a broken signature can still be reported with its d= and s=: the tags
// returned are the well-formed ones (the first of duplicates), the error
// is the first problem.
func parseTagList(s string) ([]tagSpec, error) {
	var out []tagSpec
	var first error
	fail := func(err error) {
		if first == nil {
			first = err
		}
	}
	start := 0
	for start <= len(s) {
		end := strings.IndexByte(s[start:], ';')
		if end < 0 {
			end = len(s)
		} else {
			end += start
		}
		a, b := trimFWS(s, start, end)
		if a < b {
			if len(out) == maxTags {
				fail(fmt.Errorf("more than %d tags", maxTags))
				break
			}
			if err := addTagSpec(&out, s, a, b); err != nil {
				fail(err)
			}
		}
		start = end + 1
	}
	return out, first
}

// addTagSpec parses the tag-spec s[a:b] (FWS already trimmed) into out.
func addTagSpec(out *[]tagSpec, s string, a, b int) error {
	eq := strings.IndexByte(s[a:b], '=')
	if eq < 0 {
		return errors.New("tag without \"=\"")
	}
	na, nb := trimFWS(s, a, a+eq)
	name := s[na:nb]
	if !validTagName(name) {
		return fmt.Errorf("invalid tag name %q", truncate(name, 20))
	}
	for _, t := range *out {
		if t.name == name {
			return fmt.Errorf("duplicate tag %q", name) // RFC 6376 §3.2
		}
	}
	va, vb := trimFWS(s, a+eq+1, b)
	*out = append(*out, tagSpec{name: name, value: s[va:vb], vStart: va, vEnd: vb})
	return nil
}

// trimFWS narrows s[a:b] past leading and trailing FWS (RFC 5322 §3.2.2:
// WSP and line breaks).
func trimFWS(s string, a, b int) (int, int) {
	for a < b && isFWS(s[a]) {
		a++
	}
	for b > a && isFWS(s[b-1]) {
		b--
	}
	return a, b
}

func isFWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// validTagName: RFC 6376 §3.2 tag-name = ALPHA *ALNUMPUNC.
func validTagName(s string) bool {
	if s == "" || !isAlpha(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlpha(c) && !(c >= '0' && c <= '9') && c != '_' {
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// tagMap turns parsed tags into a map for lookups by name.
func tagMap(tags []tagSpec) map[string]string {
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		m[t.name] = t.value
	}
	return m
}

// colonList splits a ":"-separated tag value (h=, q=, key h=, s=, t=)
// into its FWS-free, non-empty elements.
func colonList(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ":") {
		if e = stripFWS(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}
