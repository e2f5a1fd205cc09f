package testcase

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// Limits on what a case file may ask for, so that a broken or hostile case
// fails with an error instead of exhausting memory.
const (
	maxCaseFileSize = 4 << 20
	maxBodySize     = 64 << 20
	maxHeaderFields = 1000
	maxSignings     = 50
	maxCasesPerDir  = 10000
)

// DefaultRcpt is the recipient a case gets when its envelope names none.
const DefaultRcpt = "sink@lab.test"

// Spec modes a case is judged in.
const (
	ModeRFC7489 = "rfc7489"
	ModeRFC9989 = "rfc9989"
)

// Case is one acceptance case: the DNS data it needs, one SMTP transaction
// and what the milter must do with it.
type Case struct {
	ID       string           `json:"id"`
	Title    string           `json:"title"`
	RFC      string           `json:"rfc"`
	Notes    string           `json:"notes"`
	DNS      []dnstest.Record `json:"dns"`
	Envelope Envelope         `json:"envelope"`
	Message  Message          `json:"message"`
	DKIM     []Signing        `json:"dkim"`
	// Expect applies in RFC 7489 mode, and in RFC 9989 mode unless
	// ExpectRFC9989 is set.
	Expect        Expectations `json:"expect"`
	ExpectRFC9989 Expectations `json:"expect_rfc9989"`
	// Advisory holds SHOULD-level expectations: a mismatch is a warning.
	Advisory Expectations `json:"advisory"`
}

// Envelope is the SMTP envelope of a case, with defaults applied by Load.
type Envelope struct {
	ClientIP   string   `json:"client_ip"`
	ClientName string   `json:"client_name"`
	Helo       string   `json:"helo"`
	MailFrom   string   `json:"mail_from"`
	Rcpt       []string `json:"rcpt"`
}

// Message is the header and body a case sends, before auto headers,
// signing and tampering.
type Message struct {
	Headers       []HeaderPair `json:"headers"`
	Body          string       `json:"body"`
	BodySize      int          `json:"body_size"`
	NoAutoHeaders bool         `json:"no_auto_headers"`
}

// HeaderPair is one [name, value] entry of a case's header list.
type HeaderPair struct {
	Name, Value string
}

// UnmarshalJSON insists on exactly two strings, because encoding/json would
// silently drop a third element of a fixed-size array.
func (p *HeaderPair) UnmarshalJSON(b []byte) error {
	var v []string
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("header entry: %w", err)
	}
	if len(v) != 2 {
		return fmt.Errorf("header entry has %d elements, want [name, value]", len(v))
	}
	p.Name, p.Value = v[0], v[1]
	return nil
}

// MarshalJSON writes the [name, value] form back.
func (p HeaderPair) MarshalJSON() ([]byte, error) {
	return json.Marshal([]string{p.Name, p.Value})
}

// Signing is one DKIM signing instruction.
type Signing struct {
	Domain       string   `json:"domain"`
	Selector     string   `json:"selector"`
	Key          string   `json:"key"`
	Algorithm    string   `json:"algorithm"` // default rsa-sha256
	Canon        string   `json:"canon"`     // default relaxed/relaxed
	Headers      []string `json:"headers"`   // default DefaultSignedHeaders
	Identity     string   `json:"identity"`
	BodyLength   bool     `json:"body_length"`
	TamperBody   bool     `json:"tamper_body"`
	TamperHeader string   `json:"tamper_header"`
}

// DefaultSignedHeaders is the h= list of a signing that names none.
var DefaultSignedHeaders = []string{"from", "to", "subject", "date", "message-id"}

// Expectations is one expectation object or a list of alternatives; the
// case passes if any one alternative matches.
type Expectations []Expectation

// Expectation is one alternative outcome. Fields left out are not checked.
type Expectation struct {
	SMTP            StringSet `json:"smtp"`
	Queue           StringSet `json:"queue"`
	AR              *ARExpect `json:"ar"`
	ForgedARRemoved *bool     `json:"forged_ar_removed"`
}

// ARExpect constrains the Authentication-Results the milter added.
type ARExpect struct {
	DMARC      StringSet `json:"dmarc"`
	HeaderFrom StringSet `json:"header.from"`
	SPF        StringSet `json:"spf"`
	DKIM       StringSet `json:"dkim"`
}

// StringSet is a JSON string or list of strings: the acceptable values.
// Nil means the field was not given.
type StringSet []string

// UnmarshalJSON accepts "x" or ["x", "y"]; an empty list would accept
// nothing, which is always a mistake in a case.
func (s *StringSet) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = StringSet{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("want a string or a list of strings: %s", truncate(string(b), 60))
	}
	if len(many) == 0 {
		return errors.New("empty list of acceptable values")
	}
	*s = many
	return nil
}

// Has reports whether v is one of the acceptable values.
func (s StringSet) Has(v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// HasFold is Has, case-insensitively.
func (s StringSet) HasFold(v string) bool {
	for _, x := range s {
		if strings.EqualFold(x, v) {
			return true
		}
	}
	return false
}

// UnmarshalJSON accepts one object or a list of them, each decoded
// strictly (a custom unmarshaler does not inherit the outer decoder's
// DisallowUnknownFields).
func (e *Expectations) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var raws []json.RawMessage
		if err := json.Unmarshal(b, &raws); err != nil {
			return err
		}
		if len(raws) == 0 {
			return errors.New("empty list of alternatives")
		}
		out := make(Expectations, 0, len(raws))
		for i, r := range raws {
			var x Expectation
			if err := strictDecode(r, &x); err != nil {
				return fmt.Errorf("alternative %d: %w", i, err)
			}
			out = append(out, x)
		}
		*e = out
		return nil
	}
	var x Expectation
	if err := strictDecode(b, &x); err != nil {
		return err
	}
	*e = Expectations{x}
	return nil
}

// UnmarshalJSON decodes strictly, for the same reason as Expectations.
func (x *Expectation) UnmarshalJSON(b []byte) error {
	type plain Expectation
	var p plain
	if err := strictDecode(b, &p); err != nil {
		return err
	}
	*x = Expectation(p)
	return nil
}

// UnmarshalJSON decodes strictly.
func (a *ARExpect) UnmarshalJSON(b []byte) error {
	type plain ARExpect
	var p plain
	if err := strictDecode(b, &p); err != nil {
		return err
	}
	*a = ARExpect(p)
	return nil
}

func strictDecode(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

// caseFile mirrors Case with pointers for the required keys, so that a
// missing key is told apart from an empty one.
type caseFile struct {
	ID            *string           `json:"id"`
	Title         string            `json:"title"`
	RFC           string            `json:"rfc"`
	Notes         string            `json:"notes"`
	DNS           *[]dnstest.Record `json:"dns"`
	Envelope      *envelopeFile     `json:"envelope"`
	Message       *Message          `json:"message"`
	DKIM          []Signing         `json:"dkim"`
	Expect        Expectations      `json:"expect"`
	ExpectRFC9989 Expectations      `json:"expect_rfc9989"`
	Advisory      Expectations      `json:"advisory"`
}

type envelopeFile struct {
	ClientIP   *string  `json:"client_ip"`
	ClientName *string  `json:"client_name"`
	Helo       *string  `json:"helo"`
	MailFrom   *string  `json:"mail_from"`
	Rcpt       []string `json:"rcpt"`
}

// Load reads one case file strictly: unknown keys, missing required keys,
// an id that differs from the file name or values outside the format are
// errors. Defaults are applied: client_name is the HELO name, rcpt is
// [DefaultRcpt].
func Load(path string) (*Case, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCaseFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxCaseFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxCaseFileSize)
	}
	id := strings.TrimSuffix(filepath.Base(path), ".json")
	c, err := parse(b, id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func parse(b []byte, id string) (*Case, error) {
	var cf caseFile
	if err := strictDecode(b, &cf); err != nil {
		return nil, err
	}
	if cf.ID != nil && *cf.ID != id {
		return nil, fmt.Errorf("id %q differs from the file name %q", *cf.ID, id)
	}
	switch {
	case strings.TrimSpace(cf.Title) == "":
		return nil, errors.New("missing title")
	case cf.DNS == nil:
		return nil, errors.New("missing dns")
	case cf.Envelope == nil:
		return nil, errors.New("missing envelope")
	case cf.Message == nil:
		return nil, errors.New("missing message")
	case len(cf.Expect) == 0:
		return nil, errors.New("missing expect")
	}
	env, err := cf.Envelope.resolve()
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	c := &Case{
		ID:            id,
		Title:         cf.Title,
		RFC:           cf.RFC,
		Notes:         cf.Notes,
		DNS:           *cf.DNS,
		Envelope:      env,
		Message:       *cf.Message,
		DKIM:          cf.DKIM,
		Expect:        cf.Expect,
		ExpectRFC9989: cf.ExpectRFC9989,
		Advisory:      cf.Advisory,
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (e *envelopeFile) resolve() (Envelope, error) {
	switch {
	case e.ClientIP == nil:
		return Envelope{}, errors.New("missing client_ip")
	case e.Helo == nil:
		return Envelope{}, errors.New("missing helo")
	case e.MailFrom == nil:
		return Envelope{}, errors.New("missing mail_from")
	}
	ip, err := netip.ParseAddr(*e.ClientIP)
	if err != nil || !ip.Is4() {
		return Envelope{}, fmt.Errorf("client_ip %q is not an IPv4 address", *e.ClientIP)
	}
	env := Envelope{ClientIP: ip.String(), Helo: *e.Helo, MailFrom: *e.MailFrom, Rcpt: e.Rcpt}
	env.ClientName = env.Helo
	if e.ClientName != nil {
		env.ClientName = *e.ClientName
	}
	if e.Rcpt == nil {
		env.Rcpt = []string{DefaultRcpt}
	} else if len(e.Rcpt) == 0 {
		return Envelope{}, errors.New("empty rcpt list")
	}
	for _, s := range append([]string{env.Helo, env.MailFrom, env.ClientName}, env.Rcpt...) {
		if strings.ContainsAny(s, "\r\n\x00<>") {
			return Envelope{}, fmt.Errorf("envelope value %q holds a line break, NUL or angle bracket", truncate(s, 60))
		}
	}
	return env, nil
}

var (
	headerNameRE = regexp.MustCompile(`^[!-9;-~]+$`) // RFC 5322 §3.6.8 ftext
	keyNameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	smtpValues   = StringSet{"accept", "reject", "tempfail"}
	queueValues  = StringSet{"delivered", "hold", "none"}
	dmarcValues  = StringSet{"pass", "fail", "none", "temperror", "permerror", "absent"}
	authValues   = StringSet{"pass", "fail", "none", "neutral", "softfail", "policy", "temperror", "permerror", "absent"}
)

func (c *Case) validate() error {
	m := &c.Message
	if len(m.Headers) > maxHeaderFields {
		return fmt.Errorf("message: %d header fields, at most %d", len(m.Headers), maxHeaderFields)
	}
	for i, h := range m.Headers {
		if !headerNameRE.MatchString(h.Name) {
			return fmt.Errorf("message: header %d: invalid field name %q", i, truncate(h.Name, 60))
		}
		if err := checkFolding(h.Value); err != nil {
			return fmt.Errorf("message: header %d (%s): %w", i, h.Name, err)
		}
	}
	if m.BodySize < 0 || m.BodySize > maxBodySize {
		return fmt.Errorf("message: body_size %d outside 0..%d", m.BodySize, maxBodySize)
	}
	if len(m.Body) > maxBodySize {
		return fmt.Errorf("message: body longer than %d bytes", maxBodySize)
	}
	if len(c.DKIM) > maxSignings {
		return fmt.Errorf("dkim: %d signings, at most %d", len(c.DKIM), maxSignings)
	}
	for i := range c.DKIM {
		if err := c.DKIM[i].validate(); err != nil {
			return fmt.Errorf("dkim %d: %w", i, err)
		}
	}
	for _, x := range []struct {
		name string
		e    Expectations
	}{{"expect", c.Expect}, {"expect_rfc9989", c.ExpectRFC9989}, {"advisory", c.Advisory}} {
		for i, alt := range x.e {
			if err := alt.validate(); err != nil {
				return fmt.Errorf("%s alternative %d: %w", x.name, i, err)
			}
		}
	}
	return nil
}

// checkFolding refuses a line break that would start a new header field
// or end the header: only "\n" followed by a space or tab is a fold.
func checkFolding(v string) error {
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\r':
			return errors.New("value holds a CR (use \\n for a fold)")
		case '\n':
			if i+1 >= len(v) || (v[i+1] != ' ' && v[i+1] != '\t') {
				return errors.New("value holds a line break not followed by a space or tab")
			}
		case 0:
			return errors.New("value holds a NUL")
		}
	}
	return nil
}

func (s *Signing) validate() error {
	if s.Domain == "" || s.Selector == "" {
		return errors.New("domain and selector are required")
	}
	if strings.ContainsAny(s.Domain+s.Selector+s.Identity, ";\r\n\x00") {
		return errors.New("domain, selector or identity holds ';', a line break or NUL")
	}
	if !keyNameRE.MatchString(s.Key) {
		return fmt.Errorf("key %q is not a key name", s.Key)
	}
	if _, err := algorithmOf(s.Algorithm); err != nil {
		return err
	}
	if _, _, err := canonOf(s.Canon); err != nil {
		return err
	}
	for _, h := range s.Headers {
		if !headerNameRE.MatchString(h) {
			return fmt.Errorf("h= entry %q is not a field name", truncate(h, 60))
		}
	}
	if s.Headers != nil && len(s.Headers) == 0 {
		return errors.New("empty headers list")
	}
	if s.TamperHeader != "" && !headerNameRE.MatchString(s.TamperHeader) {
		return fmt.Errorf("tamper_header %q is not a field name", truncate(s.TamperHeader, 60))
	}
	return nil
}

func (x *Expectation) validate() error {
	if err := within("smtp", x.SMTP, smtpValues); err != nil {
		return err
	}
	if err := within("queue", x.Queue, queueValues); err != nil {
		return err
	}
	if x.AR != nil {
		if err := within("ar.dmarc", x.AR.DMARC, dmarcValues); err != nil {
			return err
		}
		if err := within("ar.spf", x.AR.SPF, authValues); err != nil {
			return err
		}
		if err := within("ar.dkim", x.AR.DKIM, authValues); err != nil {
			return err
		}
	}
	return nil
}

func within(field string, got, allowed StringSet) error {
	for _, v := range got {
		if !allowed.Has(v) {
			return fmt.Errorf("%s: unknown value %q", field, v)
		}
	}
	return nil
}

// LoadDir loads dir/cases/*.json, sorted by file name. Any bad case is an
// error: a runner that skipped it would silently test less.
func LoadDir(dir string) ([]*Case, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "cases", "*.json"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no cases/*.json", dir)
	}
	if len(paths) > maxCasesPerDir {
		return nil, fmt.Errorf("%s: %d cases, at most %d", dir, len(paths), maxCasesPerDir)
	}
	sort.Strings(paths)
	cases := make([]*Case, 0, len(paths))
	for _, p := range paths {
		c, err := Load(p)
		if err != nil {
			return nil, err
		}
		cases = append(cases, c)
	}
	return cases, nil
}

// ExpectFor returns the expectations that apply in mode, or an error for
// an unknown mode.
func (c *Case) ExpectFor(mode string) (Expectations, error) {
	switch mode {
	case ModeRFC7489:
		return c.Expect, nil
	case ModeRFC9989:
		if len(c.ExpectRFC9989) > 0 {
			return c.ExpectRFC9989, nil
		}
		return c.Expect, nil
	}
	return nil, fmt.Errorf("unknown spec mode %q (want %s or %s)", mode, ModeRFC7489, ModeRFC9989)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
