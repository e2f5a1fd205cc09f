// Package domain normalises DNS names the one way every other package
// compares them: lower case, no trailing dot, IDNA A-labels.
package domain

import (
	"errors"
	"strings"

	"golang.org/x/net/idna"
)

// ErrInvalid is returned for names that cannot be a host name.
var ErrInvalid = errors.New("domain: invalid name")

// dots are the label separators of RFC 3490 §3.1: full stop, ideographic
// full stop, fullwidth full stop, halfwidth ideographic full stop.
var dots = []string{".", "\u3002", "\uff0e", "\uff61"}

// Normalize lower-cases name, strips one trailing dot and converts U-labels
// to A-labels (RFC 5890), so that "Mail.Example.COM." and "mail.example.com"
// compare equal and golang.org/x/net/publicsuffix (case-sensitive, no
// trailing dot, A-labels only; see LIBRARIES.md) sees what it expects.
func Normalize(name string) (string, error) {
	name = strings.TrimSpace(name)
	// The trailing dot goes before ToASCII, which would map a trailing
	// U+3002 to "." and leave an empty last label: "bank.test。" would
	// then be invalid where "bank.test." is bank.test, and a From that
	// MUAs show as bank.test would escape its policy wherever a malformed
	// From is accepted. Only one, as for the ASCII dot.
	for _, dot := range dots {
		if strings.HasSuffix(name, dot) {
			name = name[:len(name)-len(dot)] // RFC 3490 §3.1: any of them separates labels
			break
		}
	}
	if name == "" || len(name) > 253 {
		return "", ErrInvalid
	}
	ascii := true
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if !ascii {
		a, err := idna.Lookup.ToASCII(name)
		if err != nil {
			return "", ErrInvalid
		}
		name = a
	}
	name = strings.ToLower(name)
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return "", ErrInvalid
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", ErrInvalid
			}
		}
	}
	return name, nil
}
