package testcase

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Field is one header field exactly as on the wire: Value is everything
// after the colon up to the final line break, leading whitespace and
// folded continuation lines (with their CRLF) included.
type Field struct{ Name, Value string }

// maxSplitFields bounds SplitMessage; far above anything a case builds.
const maxSplitFields = 10000

// tamperLine is what tamper_body inserts at the start of the body.
const tamperLine = "This line was added after signing.\r\n"

// tamperText is what tamper_header appends to a field value.
const tamperText = " (altered after signing)"

// Build returns the wire message of the case (CRLF line ends): the header
// fields in order, Date and Message-ID added unless present or
// no_auto_headers, the body padded to body_size, then signed per c.DKIM in
// order (each new DKIM-Signature on top) and tampered. now is the Date and
// the t= of every signature. Keys come from keyDir/NAME.pem.
func (c *Case) Build(keyDir string, now time.Time) ([]byte, error) {
	fields, err := c.headerFields(now)
	if err != nil {
		return nil, err
	}
	body := c.body()

	keys := map[string]crypto.Signer{}
	for i, s := range c.DKIM {
		k, ok := keys[s.Key]
		if !ok {
			if k, err = loadKey(keyDir, s.Key); err != nil {
				return nil, fmt.Errorf("case %s: dkim %d: %w", c.ID, i, err)
			}
			keys[s.Key] = k
		}
		p, err := s.params(now)
		if err != nil {
			return nil, fmt.Errorf("case %s: dkim %d: %w", c.ID, i, err)
		}
		f, err := sign(fields, body, p, k)
		if err != nil {
			return nil, fmt.Errorf("case %s: dkim %d: %w", c.ID, i, err)
		}
		fields = append([]Field{f}, fields...) // RFC 6376 §5.6: prepended
	}

	for _, s := range c.DKIM {
		if s.TamperBody {
			body = append([]byte(tamperLine), body...)
			break
		}
	}
	for _, s := range c.DKIM {
		if s.TamperHeader == "" {
			continue
		}
		i := lastField(fields, s.TamperHeader)
		if i < 0 {
			return nil, fmt.Errorf("case %s: tamper_header: no %s field", c.ID, s.TamperHeader)
		}
		fields[i].Value += tamperText
	}
	return joinMessage(fields, body), nil
}

func (s *Signing) params(now time.Time) (signParams, error) {
	alg, err := algorithmOf(s.Algorithm)
	if err != nil {
		return signParams{}, err
	}
	hc, bc, err := canonOf(s.Canon)
	if err != nil {
		return signParams{}, err
	}
	h := s.Headers
	if h == nil {
		h = DefaultSignedHeaders
	}
	return signParams{
		domain: s.Domain, selector: s.Selector, identity: s.Identity,
		alg: alg, headerCanon: hc, bodyCanon: bc, headers: h,
		bodyLength: s.BodyLength, time: now, fold: true,
	}, nil
}

func (c *Case) headerFields(now time.Time) ([]Field, error) {
	fields := make([]Field, 0, len(c.Message.Headers)+2)
	for i, h := range c.Message.Headers {
		// Validate again: a Case may be built by hand, not only by Load.
		if !headerNameRE.MatchString(h.Name) {
			return nil, fmt.Errorf("case %s: header %d: invalid field name %q", c.ID, i, truncate(h.Name, 60))
		}
		if err := checkFolding(h.Value); err != nil {
			return nil, fmt.Errorf("case %s: header %d: %w", c.ID, i, err)
		}
		fields = append(fields, Field{Name: h.Name, Value: " " + strings.ReplaceAll(h.Value, "\n", "\r\n")})
	}
	if !c.Message.NoAutoHeaders {
		if lastField(fields, "Date") < 0 {
			fields = append(fields, Field{Name: "Date", Value: " " + now.Format(time.RFC1123Z)})
		}
		if lastField(fields, "Message-ID") < 0 {
			id := fmt.Sprintf(" <%s.%d@lab.test>", sanitizeID(c.ID), now.UnixNano())
			fields = append(fields, Field{Name: "Message-ID", Value: id})
		}
	}
	return fields, nil
}

func sanitizeID(id string) string {
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		return "case"
	}
	return string(b)
}

// body returns the CRLF body, never empty, padded to body_size.
func (c *Case) body() []byte {
	s := strings.ReplaceAll(c.Message.Body, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\n", "\r\n")
	if !strings.HasSuffix(s, "\r\n") {
		s += "\r\n" // an empty body becomes a single CRLF
	}
	size := c.Message.BodySize
	if size > maxBodySize {
		size = maxBodySize
	}
	if len(s) >= size {
		return []byte(s)
	}
	const filler = "Filler line to make the message larger than it needs to be.\r\n"
	b := make([]byte, 0, size+len(filler))
	b = append(b, s...)
	for len(b) < size {
		b = append(b, filler...)
	}
	return b
}

func lastField(fields []Field, name string) int {
	for i := len(fields) - 1; i >= 0; i-- {
		if strings.EqualFold(fields[i].Name, name) {
			return i
		}
	}
	return -1
}

func joinMessage(fields []Field, body []byte) []byte {
	n := len(body) + 2
	for _, f := range fields {
		n += len(f.Name) + len(f.Value) + 3
	}
	out := make([]byte, 0, n)
	for _, f := range fields {
		out = append(out, f.Name...)
		out = append(out, ':')
		out = append(out, f.Value...)
		out = append(out, '\r', '\n')
	}
	out = append(out, '\r', '\n')
	return append(out, body...)
}

// SplitMessage splits a message into its header fields, in order and
// exactly as received (Value keeps the leading whitespace and the folded
// continuation lines with their own line ends, but not the final line
// end), and the body after the empty line. Both CRLF and bare LF line ends
// are accepted. A message without an empty line is all header and has an
// empty body.
func SplitMessage(msg []byte) ([]Field, []byte, error) {
	var fields []Field
	rest := msg
	for len(rest) > 0 {
		if len(fields) > maxSplitFields {
			return nil, nil, fmt.Errorf("more than %d header fields", maxSplitFields)
		}
		// The empty line ends the header (RFC 5322 §2.1).
		if bytes.HasPrefix(rest, []byte("\r\n")) {
			return fields, rest[2:], nil
		}
		if rest[0] == '\n' {
			return fields, rest[1:], nil
		}
		if rest[0] == ' ' || rest[0] == '\t' {
			if len(fields) == 0 {
				return nil, nil, errors.New("header starts with a continuation line")
			}
			return nil, nil, errors.New("continuation line not attached to a field")
		}
		// A field runs until a line end not followed by WSP (RFC 5322 §2.2.3).
		end, next := fieldEnd(rest)
		line := rest[:end]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, nil, fmt.Errorf("header line %q has no field name", truncate(string(firstLine(line)), 60))
		}
		name := string(line[:colon])
		if !headerNameRE.MatchString(strings.TrimRight(name, " \t")) {
			return nil, nil, fmt.Errorf("invalid field name %q", truncate(name, 60))
		}
		fields = append(fields, Field{Name: name, Value: string(line[colon+1:])})
		rest = rest[next:]
	}
	return fields, nil, nil
}

// fieldEnd returns where the field starting at b ends (before its line
// end) and where the next one starts.
func fieldEnd(b []byte) (end, next int) {
	i := 0
	for {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return len(b), len(b)
		}
		nl := i + j
		end = nl
		if nl > 0 && b[nl-1] == '\r' {
			end = nl - 1
		}
		if nl+1 < len(b) && (b[nl+1] == ' ' || b[nl+1] == '\t') {
			i = nl + 1
			continue
		}
		return end, nl + 1
	}
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexAny(b, "\r\n"); i >= 0 {
		return b[:i]
	}
	return b
}
