package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/testcase"
)

// Client is one sending host: every milter connection belongs to one
// client (one SMTP connection comes from one IP) and sends several of its
// messages, as Postfix does when a peer reuses its connection.
type Client struct {
	Name string // label in the report
	IP   string
	Host string // the client host name the MTA reports ("unknown" if none)
	Helo string
	Msgs []*Message
}

// Message is one SMTP transaction after the client is connected.
type Message struct {
	Name     string
	MailFrom string // bare address, "" for the null reverse path
	Rcpt     []string
	// Fields are the header fields as on the wire (leading space kept,
	// folded lines with CRLF), Body the CRLF body.
	Fields []testcase.Field
	Body   []byte
	// Expect is the action the message must get ("" = not checked), so
	// a run where the milter answers wrongly shows up in the report.
	Expect string
}

// Size is the wire size of the message.
func (m *Message) Size() int {
	n := len(m.Body) + 2
	for _, f := range m.Fields {
		n += len(f.Name) + len(f.Value) + 3
	}
	return n
}

// benchBody is a plain-text body of ordinary size (~4 KiB): DKIM body
// hashing is part of the cost being measured.
func benchBody() string {
	var b strings.Builder
	b.WriteString("Hello,\n\nthe figures for this week follow.\n\n")
	for i := 0; b.Len() < 4000; i++ {
		fmt.Fprintf(&b, "line %03d: lorem ipsum dolor sit amet, consectetur adipiscing elit %d\n", i, i*7919%1000)
	}
	b.WriteString("\n-- \nThe bench\n")
	return b.String()
}

// BuiltinCorpus signs the bench messages with the keys in keyDir (the
// testdata/keys of the repository); the DNS they need is
// deploy/bench/zone.json. One client per outcome, so a run mixes
// DKIM+SPF aligned passes, an ESP sending for a p=quarantine domain, a
// forwarder that breaks SPF but keeps DKIM, and a spoofer of a p=reject
// domain.
func BuiltinCorpus(keyDir string, now time.Time) ([]*Client, error) {
	body := benchBody()
	hdr := func(from, subject string) []testcase.HeaderPair {
		return []testcase.HeaderPair{
			{Name: "Received", Value: "from mail.example (mail.example [192.0.2.99])\n\tby relay.example with ESMTPS id 4F2A1; " + now.Format(time.RFC1123Z)},
			{Name: "From", Value: from},
			{Name: "To", Value: "Bob <bob@lab.test>"},
			{Name: "Subject", Value: subject},
			{Name: "MIME-Version", Value: "1.0"},
			{Name: "Content-Type", Value: "text/plain; charset=utf-8"},
		}
	}
	sign := func(domain, key string) []testcase.Signing {
		return []testcase.Signing{{Domain: domain, Selector: "sel", Key: key}}
	}
	type spec struct {
		client, name, ip, host, helo string
		mailFrom                     string
		from, subject                string
		dkim                         []testcase.Signing
		expect                       string
	}
	specs := []spec{
		{"aligned", "dkim+spf aligned, p=reject", "192.0.2.10", "mx.reject.bench", "mx.reject.bench",
			"bounce@reject.bench", "Alice <alice@reject.bench>", "Weekly report", sign("reject.bench", "rsa2048"), "accept"},
		{"aligned", "spf aligned, p=none domain", "192.0.2.10", "mx.reject.bench", "mx.reject.bench",
			"carol@none.bench", "Carol <carol@none.bench>", "Minutes", nil, "accept"},
		{"esp", "third-party dkim only, p=quarantine", "192.0.2.20", "out.esp.bench", "out.esp.bench",
			"bounce-123@esp.bench", "News <news@quar.bench>", "Newsletter", sign("esp.bench", "rsa2048-alt"), "quarantine"},
		{"esp", "third-party dkim only, p=none", "192.0.2.20", "out.esp.bench", "out.esp.bench",
			"bounce-124@esp.bench", "Dave <dave@none.bench>", "Invoice", sign("esp.bench", "rsa2048-alt"), "accept"},
		{"forwarder", "forwarded: spf unaligned, dkim aligned", "203.0.113.5", "relay.fwd.bench", "relay.fwd.bench",
			"srs0=ab12=alice@fwd.bench", "Alice <alice@reject.bench>", "Forwarded report", sign("reject.bench", "rsa2048"), "accept"},
		{"spoofer", "spoofed p=reject domain", "198.51.100.7", "unknown", "spoof.bench",
			"ceo@reject.bench", "CEO <ceo@reject.bench>", "Urgent wire transfer", nil, "reject"},
	}
	var clients []*Client
	byName := map[string]*Client{}
	for i, s := range specs {
		c := &testcase.Case{
			ID:      fmt.Sprintf("bench-%d", i),
			Message: testcase.Message{Headers: hdr(s.from, s.subject), Body: body},
			DKIM:    s.dkim,
		}
		raw, err := c.Build(keyDir, now)
		if err != nil {
			return nil, fmt.Errorf("corpus %q: %w", s.name, err)
		}
		fields, b, err := testcase.SplitMessage(raw)
		if err != nil {
			return nil, fmt.Errorf("corpus %q: %w", s.name, err)
		}
		cl := byName[s.client]
		if cl == nil {
			cl = &Client{Name: s.client, IP: s.ip, Host: s.host, Helo: s.helo}
			byName[s.client] = cl
			clients = append(clients, cl)
		}
		cl.Msgs = append(cl.Msgs, &Message{Name: s.name, MailFrom: s.mailFrom, Rcpt: []string{"bob@lab.test"}, Fields: fields, Body: b, Expect: s.expect})
	}
	return clients, nil
}

// EMLCorpus reads every *.eml in dir as one client with the given
// envelope; nothing is expected of the outcome. The MAIL FROM is the
// envelope flag, or else the From address of each message.
func EMLCorpus(dir, ip, helo, mailFrom string) ([]*Client, error) {
	if net.ParseIP(ip) == nil {
		return nil, fmt.Errorf("client IP %q is not an IP address", ip)
	}
	paths, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no .eml files", dir)
	}
	cl := &Client{Name: filepath.Base(dir), IP: ip, Host: "unknown", Helo: helo}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		fields, body, err := testcase.SplitMessage(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		body = toCRLF(body)
		for i := range fields {
			fields[i].Value = strings.ReplaceAll(strings.ReplaceAll(fields[i].Value, "\r\n", "\n"), "\n", "\r\n")
		}
		from := mailFrom
		if from == "" {
			from = addrOf(fields, "From")
		}
		cl.Msgs = append(cl.Msgs, &Message{Name: filepath.Base(p), MailFrom: from, Rcpt: []string{"bob@lab.test"}, Fields: fields, Body: body})
	}
	return []*Client{cl}, nil
}

// addrOf takes the first angle-addr or bare address of a field, good
// enough for an envelope sender of a test message.
func addrOf(fields []testcase.Field, name string) string {
	for _, f := range fields {
		if !strings.EqualFold(f.Name, name) {
			continue
		}
		v := strings.TrimSpace(f.Value)
		if i := strings.LastIndexByte(v, '<'); i >= 0 {
			if j := strings.IndexByte(v[i:], '>'); j > 0 {
				return v[i+1 : i+j]
			}
		}
		return v
	}
	return ""
}

func toCRLF(b []byte) []byte {
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	return []byte(strings.ReplaceAll(s, "\n", "\r\n"))
}
