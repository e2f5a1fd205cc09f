package testcase

import (
	"bytes"
	"strings"
	"testing"
)

func TestSplitMessage(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		fields  []Field
		body    string
		wantErr bool
	}{
		{"crlf", "A: 1\r\nB:2\r\n\r\nbody\r\n", []Field{{"A", " 1"}, {"B", "2"}}, "body\r\n", false},
		{"folded kept raw", "Subject: a\r\n\tb\r\n c\r\nX: y\r\n\r\n", []Field{{"Subject", " a\r\n\tb\r\n c"}, {"X", " y"}}, "", false},
		{"bare LF", "A: 1\n b\nB: 2\n\nbody\n", []Field{{"A", " 1\n b"}, {"B", " 2"}}, "body\n", false},
		{"no empty line", "A: 1\r\n", []Field{{"A", " 1"}}, "", false},
		{"no line end at all", "A: 1", []Field{{"A", " 1"}}, "", false},
		{"empty header", "\r\nbody", nil, "body", false},
		{"empty message", "", nil, "", false},
		{"obsolete space before colon", "Subject : x\r\n\r\n", []Field{{"Subject ", " x"}}, "", false},
		{"value with colons", "A: b:c\r\n\r\n", []Field{{"A", " b:c"}}, "", false},
		{"continuation first", " A: 1\r\n\r\n", nil, "", true},
		{"no colon", "garbage\r\n\r\n", nil, "", true},
		{"empty name", ": x\r\n\r\n", nil, "", true},
		{"control in name", "A\x01: x\r\n\r\n", nil, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields, body, err := SplitMessage([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if len(fields) != len(tt.fields) {
				t.Fatalf("fields = %q, want %q", fields, tt.fields)
			}
			for i := range fields {
				if fields[i] != tt.fields[i] {
					t.Errorf("field %d = %q, want %q", i, fields[i], tt.fields[i])
				}
			}
			if string(body) != tt.body {
				t.Errorf("body = %q, want %q", body, tt.body)
			}
		})
	}
}

func TestSplitMessageBounded(t *testing.T) {
	msg := strings.Repeat("A: 1\r\n", maxSplitFields+5) + "\r\n"
	if _, _, err := SplitMessage([]byte(msg)); err == nil {
		t.Error("no error for more fields than the bound")
	}
}

func FuzzSplitMessage(f *testing.F) {
	f.Add([]byte("A: 1\r\n\tb\r\nB: 2\r\n\r\nbody\r\n"))
	f.Add([]byte("A: 1\n\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		fields, body, err := SplitMessage(msg)
		if err != nil {
			return
		}
		// A CRLF message with a header/body separator must round-trip.
		if bytes.Contains(msg, []byte("\r\n\r\n")) && !bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) &&
			!bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\r")) {
			if got := joinMessage(fields, body); !bytes.Equal(got, msg) {
				t.Errorf("round trip: %q -> %q", msg, got)
			}
		}
	})
}

func TestBuildMessage(t *testing.T) {
	now := mustTime("2026-06-01T12:00:00Z")
	base := func() *Case {
		return &Case{ID: "x", Message: Message{Headers: []HeaderPair{{"From", "a@b.test"}, {"Subject", "one\n two"}}, Body: "line\n"}}
	}
	tests := []struct {
		name    string
		edit    func(*Case)
		check   func(t *testing.T, fields []Field, body string)
		wantErr bool
	}{
		{"auto headers and CRLF", func(*Case) {}, func(t *testing.T, f []Field, body string) {
			if len(f) != 4 || f[1].Value != " one\r\n two" || f[2].Name != "Date" || f[3].Name != "Message-ID" {
				t.Errorf("fields = %q", f)
			}
			if f[2].Value != " Mon, 01 Jun 2026 12:00:00 +0000" {
				t.Errorf("Date = %q", f[2].Value)
			}
			if body != "line\r\n" {
				t.Errorf("body = %q", body)
			}
		}, false},
		{"no_auto_headers", func(c *Case) { c.Message.NoAutoHeaders = true }, func(t *testing.T, f []Field, _ string) {
			if len(f) != 2 {
				t.Errorf("fields = %q", f)
			}
		}, false},
		{"existing date kept", func(c *Case) { c.Message.Headers = append(c.Message.Headers, HeaderPair{"date", "x"}) }, func(t *testing.T, f []Field, _ string) {
			if len(f) != 4 || f[2].Value != " x" || f[3].Name != "Message-ID" {
				t.Errorf("fields = %q", f)
			}
		}, false},
		{"empty body is CRLF", func(c *Case) { c.Message.Body = "" }, func(t *testing.T, _ []Field, body string) {
			if body != "\r\n" {
				t.Errorf("body = %q", body)
			}
		}, false},
		{"body without final newline", func(c *Case) { c.Message.Body = "a\nb" }, func(t *testing.T, _ []Field, body string) {
			if body != "a\r\nb\r\n" {
				t.Errorf("body = %q", body)
			}
		}, false},
		{"body_size", func(c *Case) { c.Message.BodySize = 10000 }, func(t *testing.T, _ []Field, body string) {
			if len(body) < 10000 || len(body) > 10200 || !strings.HasPrefix(body, "line\r\n") || !strings.HasSuffix(body, "\r\n") {
				t.Errorf("body of %d bytes", len(body))
			}
		}, false},
		{"tamper_header without field", func(c *Case) {
			c.DKIM = []Signing{{Domain: "b.test", Selector: "s", Key: "rsa2048", TamperHeader: "Cc"}}
		}, nil, true},
		{"tamper_header and tamper_body", func(c *Case) {
			c.Message.Headers = append(c.Message.Headers, HeaderPair{"Subject", "two"})
			c.DKIM = []Signing{{Domain: "b.test", Selector: "s", Key: "rsa2048", TamperHeader: "subject", TamperBody: true}}
		}, func(t *testing.T, f []Field, body string) {
			if f[1].Value != " one\r\n two" || f[2].Value != " two"+tamperText {
				t.Errorf("fields = %q", f)
			}
			if body != tamperLine+"line\r\n" {
				t.Errorf("body = %q", body)
			}
		}, false},
		{"header injection refused", func(c *Case) { c.Message.Headers[0].Value = "a@b.test\nBcc: x" }, nil, true},
		{"bad name refused", func(c *Case) { c.Message.Headers[0].Name = "Fr om" }, nil, true},
		{"missing key", func(c *Case) { c.DKIM = []Signing{{Domain: "b.test", Selector: "s", Key: "nokey"}} }, nil, true},
		{"key/algorithm mismatch", func(c *Case) {
			c.DKIM = []Signing{{Domain: "b.test", Selector: "s", Key: "ed25519", Algorithm: "rsa-sha256"}}
		}, nil, true},
	}
	kd := keyDir(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.edit(c)
			msg, err := c.Build(kd, now)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			fields, body, err := SplitMessage(msg)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.DKIM) > 0 {
				if fields[0].Name != "DKIM-Signature" {
					t.Fatalf("no DKIM-Signature on top: %q", fields[0])
				}
				fields = fields[1:]
			}
			tt.check(t, fields, string(body))
		})
	}
}
