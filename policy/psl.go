package policy

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/net/publicsuffix"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// Bounds for a list file: the real list is about 250 KB and 10 000 rules.
const (
	maxPSLBytes = 16 << 20
	maxPSLLine  = 1024
)

// bundledPSL is golang.org/x/net/publicsuffix, compiled into the binary.
// Callers pass normalised names: that package is case-sensitive, rejects a
// trailing dot and needs A-labels (LIBRARIES.md, "Names").
type bundledPSL struct{}

func (bundledPSL) PublicSuffix(name string) string {
	s, _ := publicsuffix.PublicSuffix(name)
	return s
}

// ruleList is a list in the publicsuffix.org format.
type ruleList struct {
	exact     map[string]bool // "co.uk"
	wildcard  map[string]bool // "*.ck" stored as "ck"
	exception map[string]bool // "!www.ck" stored as "www.ck"
}

// LoadPSL reads a public suffix list file in the publicsuffix.org format
// (https://publicsuffix.org/list/, "Format"), for the RFC 7489 mode
// (RFC 7489 §3.2).
func LoadPSL(path string) (PublicSuffixList, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l, err := ParsePSL(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// ParsePSL parses the publicsuffix.org format: one rule per line, the
// first whitespace-separated word counts, "//" starts a comment, "*." is a
// wildcard label and "!" an exception. Rules are normalised like the
// names they are matched against (lower case, A-labels). A rule that
// cannot be normalised is an error, so a broken file is noticed at load.
func ParsePSL(r io.Reader) (PublicSuffixList, error) {
	l := &ruleList{exact: map[string]bool{}, wildcard: map[string]bool{}, exception: map[string]bool{}}
	sc := bufio.NewScanner(io.LimitReader(r, maxPSLBytes+1))
	sc.Buffer(make([]byte, 0, 4096), maxPSLLine)
	n, lineNo, total := 0, 0, 0
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		total += len(line) + 1
		if total > maxPSLBytes {
			return nil, fmt.Errorf("list larger than %d bytes", maxPSLBytes)
		}
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "//") {
			continue
		}
		rule := fields[0]
		set := l.exact
		switch {
		case strings.HasPrefix(rule, "!"):
			rule, set = rule[1:], l.exception
		case strings.HasPrefix(rule, "*."):
			rule, set = rule[2:], l.wildcard
		}
		norm, err := domain.Normalize(rule)
		if err != nil || strings.Contains(norm, "*") {
			return nil, fmt.Errorf("line %d: bad rule %q", lineNo, clip(fields[0]))
		}
		set[norm] = true
		n++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", lineNo+1, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("no rules")
	}
	return l, nil
}

// PublicSuffix applies the publicsuffix.org algorithm: an exception rule
// prevails and yields its parent; otherwise the matching rule with the
// most labels; with no match the implicit rule "*" (the last label).
func (l *ruleList) PublicSuffix(name string) string {
	labels := strings.Split(name, ".")
	for i := range labels {
		if l.exception[strings.Join(labels[i:], ".")] {
			if i+1 >= len(labels) {
				return name
			}
			return strings.Join(labels[i+1:], ".")
		}
	}
	for i := range labels {
		s := strings.Join(labels[i:], ".")
		if i > 0 && l.wildcard[s] {
			return strings.Join(labels[i-1:], ".")
		}
		if l.exact[s] {
			return s
		}
	}
	return labels[len(labels)-1]
}

// pslOrgDomain is RFC 7489 §3.2: the public suffix plus one label; a
// name that is itself a public suffix is its own Organizational Domain.
func pslOrgDomain(psl PublicSuffixList, name string) string {
	suffix := psl.PublicSuffix(name)
	if suffix == "" || suffix == name || !strings.HasSuffix(name, "."+suffix) {
		return name
	}
	rest := strings.TrimSuffix(name, "."+suffix)
	if i := strings.LastIndexByte(rest, '.'); i >= 0 {
		rest = rest[i+1:]
	}
	return rest + "." + suffix
}
