package auth

import (
	"hash"
	"strings"
)

// bodyCanon canonicalizes a message body while it streams (RFC 6376
// §3.4.3 simple, §3.4.4 relaxed) and passes the result to a lengthHash.
// It withholds only what it cannot decide yet: a run of line ends (empty
// lines at the end of the body are dropped), one CR that may start a CRLF,
// and, relaxed, one pending WSP run. Memory stays constant whatever the
// body and line lengths.
//
// A bare LF is taken as a line end, as go-msgauth does for the signatures
// it verifies, so that both paths agree on one message; a CR not followed
// by LF is content.
type bodyCanon struct {
	relaxed bool
	sink    *lengthHash

	crlfs   int  // line ends withheld
	cr      bool // a CR withheld, maybe the start of CRLF
	wsp     bool // relaxed: WSP seen since the last content byte
	content bool // relaxed: anything emitted yet
	closed  bool

	buf [1024]byte
	n   int
}

func newBodyCanon(relaxed bool, sink *lengthHash) *bodyCanon {
	return &bodyCanon{relaxed: relaxed, sink: sink}
}

func (c *bodyCanon) put(b byte) {
	if c.n == len(c.buf) {
		c.flush()
	}
	c.buf[c.n] = b
	c.n++
}

func (c *bodyCanon) flush() {
	c.sink.write(c.buf[:c.n])
	c.n = 0
}

// release emits what was withheld because a content byte follows.
func (c *bodyCanon) release() {
	for ; c.crlfs > 0; c.crlfs-- {
		c.put('\r')
		c.put('\n')
	}
	if c.wsp {
		c.put(' ') // RFC 6376 §3.4.4: a WSP run inside a line becomes one SP
		c.wsp = false
	}
	if c.cr {
		c.put('\r')
		c.cr = false
	}
	c.content = true
}

// Write feeds body bytes; it never fails.
func (c *bodyCanon) Write(p []byte) (int, error) {
	if c.closed {
		return len(p), nil
	}
	for _, b := range p {
		switch {
		case b == '\n':
			c.cr = false
			if c.relaxed {
				c.wsp = false // RFC 6376 §3.4.4: WSP at the end of a line is ignored
			}
			c.crlfs++
		case b == '\r':
			if c.cr {
				c.release() // the previous CR was not part of a CRLF
				c.cr = true
			} else {
				c.cr = true
			}
		case c.relaxed && (b == ' ' || b == '\t'):
			if c.cr {
				c.release()
			}
			c.wsp = true
		default:
			if c.crlfs > 0 || c.cr || c.wsp {
				c.release()
			}
			c.content = true
			c.put(b)
		}
	}
	return len(p), nil
}

// Close ends the body. Simple (RFC 6376 §3.4.3): trailing empty lines are
// dropped, a missing final CRLF is added and an empty body becomes one
// CRLF. Relaxed (§3.4.4): the same, except that an empty body stays empty.
func (c *bodyCanon) Close() {
	if c.closed {
		return
	}
	c.closed = true
	// What is withheld is CRLF* [WSP] [CR]. A final CR without LF is
	// content, and so is everything before it; otherwise it is all
	// trailing: empty lines and WSP at the end of the last line.
	if c.cr {
		c.release()
	}
	if c.content || !c.relaxed {
		c.put('\r')
		c.put('\n')
	}
	c.flush()
}

// lengthHash counts the canonicalized body and hashes its first limit
// bytes (RFC 6376 §3.5 l=).
type lengthHash struct {
	h     hash.Hash
	limit uint64
	n     uint64
}

func (s *lengthHash) write(p []byte) {
	if s.n < s.limit {
		k := uint64(len(p))
		if rest := s.limit - s.n; k > rest {
			k = rest
		}
		s.h.Write(p[:k])
	}
	s.n += uint64(len(p))
}

// canonHeaderField canonicalizes one header field given as "name:value"
// with CRLF folds, and returns it with a final CRLF (RFC 6376 §3.4.1,
// §3.4.2).
func canonHeaderField(field string, relaxed bool) string {
	if !relaxed {
		return field + "\r\n" // simple: no change at all
	}
	name, value, _ := strings.Cut(field, ":")
	var b strings.Builder
	b.Grow(len(field) + 2)
	// Relaxed: lower-case name, no WSP around the colon, unfolded, WSP
	// runs as one SP, no WSP at the end.
	b.WriteString(strings.ToLower(strings.TrimRight(name, " \t")))
	b.WriteByte(':')
	wsp, started := false, false
	for i := 0; i < len(value); i++ {
		switch ch := value[i]; ch {
		case '\r', '\n':
			// unfolding removes the line break; the WSP after it stays
		case ' ', '\t':
			wsp = true
		default:
			if wsp && started {
				b.WriteByte(' ')
			}
			wsp, started = false, true
			b.WriteByte(ch)
		}
	}
	b.WriteString("\r\n")
	return b.String()
}
