package testcase

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func loadAll(t *testing.T) ([]*Case, string) {
	t.Helper()
	dir := casesDir(t)
	cases, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return cases, dir
}

func findCase(t *testing.T, cases []*Case, prefix string) *Case {
	t.Helper()
	for _, c := range cases {
		if strings.HasPrefix(c.ID, prefix) {
			return c
		}
	}
	t.Fatalf("no case %s", prefix)
	return nil
}

func TestLoadDirAll(t *testing.T) {
	cases, dir := loadAll(t)
	paths, _ := filepath.Glob(filepath.Join(dir, "cases", "*.json"))
	if len(cases) != len(paths) || len(cases) == 0 {
		t.Fatalf("loaded %d cases from %d files", len(cases), len(paths))
	}
	for i, c := range cases {
		if i > 0 && cases[i-1].ID >= c.ID {
			t.Errorf("not sorted: %s before %s", cases[i-1].ID, c.ID)
		}
		if len(c.Envelope.Rcpt) == 0 || c.Envelope.ClientName == "" && c.Envelope.Helo != "" {
			t.Errorf("%s: defaults not applied: %+v", c.ID, c.Envelope)
		}
		for _, mode := range []string{ModeRFC7489, ModeRFC9989} {
			if e, err := c.ExpectFor(mode); err != nil || len(e) == 0 {
				t.Errorf("%s: no expectation for %s: %v", c.ID, mode, err)
			}
		}
	}
	c := findCase(t, cases, "001-")
	if c.Envelope.ClientName != c.Envelope.Helo || len(c.Envelope.Rcpt) != 1 || c.Envelope.Rcpt[0] != DefaultRcpt {
		t.Errorf("001 envelope defaults: %+v", c.Envelope)
	}
}

// TestBuildZoneAll builds the zone of the whole sample and asks it a few
// questions the cases depend on, over real DNS.
func TestBuildZoneAll(t *testing.T) {
	cases, dir := loadAll(t)
	z, err := BuildZone(filepath.Join(dir, "zone", "base.json"), filepath.Join(dir, "keys"), cases)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tests := []struct {
		name  string
		qtype uint16
		rcode int
		txt   string
	}{
		{"_dmarc.split-record.test.", dns.TypeTXT, dns.RcodeSuccess, "v=DMARC1; p=reject; adkim=r"},
		{"mx.lab.test.", dns.TypeA, dns.RcodeSuccess, ""},
		{"_dmarc.servfail.test.", dns.TypeTXT, dns.RcodeServerFailure, ""},
		{"nothing-here.test.", dns.TypeTXT, dns.RcodeNameError, ""},
	}
	for _, tt := range tests {
		m := new(dns.Msg)
		m.SetQuestion(tt.name, tt.qtype)
		m.SetEdns0(4096, false)
		cl := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
		r, _, err := cl.Exchange(m, srv.Addr())
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if r.Rcode != tt.rcode {
			t.Errorf("%s: rcode %s, want %s", tt.name, dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
		}
		if tt.txt != "" {
			if len(r.Answer) != 1 {
				t.Fatalf("%s: %d answers", tt.name, len(r.Answer))
			}
			if got := strings.Join(r.Answer[0].(*dns.TXT).Txt, ""); !strings.HasPrefix(got, tt.txt) {
				t.Errorf("%s: TXT %q", tt.name, got)
			}
		}
	}
}

func TestBuildZoneConflicts(t *testing.T) {
	mk := func(id string, recs ...dnstest.Record) *Case { return &Case{ID: id, DNS: recs} }
	txt := func(name, v string) dnstest.Record { return dnstest.Record{Name: name, Type: "TXT", Value: v} }
	tests := []struct {
		name    string
		cases   []*Case
		wantErr string
	}{
		{"same RRset twice", []*Case{mk("a", txt("x.test", "1"), txt("x.test", "2")), mk("b", txt("X.test.", "2"), txt("x.test", "1"))}, ""},
		{"different RRsets", []*Case{mk("a", txt("x.test", "1")), mk("b", txt("x.test", "2"))}, "case b"},
		{"data vs behavior", []*Case{mk("a", txt("x.test", "1")), mk("b", dnstest.Record{Name: "x.test", Behavior: "servfail"})}, "case b"},
		{"behavior for another type", []*Case{mk("a", txt("x.test", "1")), mk("b", dnstest.Record{Name: "x.test", Type: "A", Behavior: "timeout"})}, ""},
		{"missing key", []*Case{mk("a", dnstest.Record{Name: "s._domainkey.x.test", Type: "TXT", DKIMKey: "nokey"})}, "case a"},
	}
	kd := keyDir(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := BuildZone("", kd, tt.cases)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want one naming %q", err, tt.wantErr)
			}
		})
	}
	if _, err := BuildZone(filepath.Join(t.TempDir(), "none.json"), kd, nil); err == nil {
		t.Error("missing base zone file accepted")
	}
}

// TestBuildAllCases builds and signs every case and verifies the
// signatures with go-msgauth against the case's own DNS data: a signature
// must pass exactly when its key is published under its selector and
// nothing was tampered with.
func TestBuildAllCases(t *testing.T) {
	cases, dir := loadAll(t)
	kd := filepath.Join(dir, "keys")
	now := time.Now()
	for _, c := range cases {
		t.Run(c.ID, func(t *testing.T) {
			msg, err := c.Build(kd, now)
			if err != nil {
				t.Fatal(err)
			}
			fields, body, err := SplitMessage(msg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(joinMessage(fields, body), msg) {
				t.Fatal("SplitMessage does not round-trip")
			}
			if len(body) < c.Message.BodySize || !bytes.HasSuffix(body, []byte("\r\n")) {
				t.Errorf("body of %d bytes, body_size %d", len(body), c.Message.BodySize)
			}
			if bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) {
				t.Error("bare LF in the built message")
			}
			if !c.Message.NoAutoHeaders && (lastField(fields, "Date") < 0 || lastField(fields, "Message-ID") < 0) {
				t.Error("Date or Message-ID missing")
			}
			if len(c.DKIM) == 0 {
				return
			}
			vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookupFromCase(t, c, kd)})
			if err != nil {
				t.Fatal(err)
			}
			if len(vs) != len(c.DKIM) {
				t.Fatalf("%d verifications for %d signatures", len(vs), len(c.DKIM))
			}
			tampered := false
			for _, s := range c.DKIM {
				tampered = tampered || s.TamperBody || s.TamperHeader != ""
			}
			for i, v := range vs {
				s := c.DKIM[len(c.DKIM)-1-i] // results come top down, signatures were prepended
				if v.Domain != s.Domain {
					t.Fatalf("verification %d is for %s, want %s", i, v.Domain, s.Domain)
				}
				published := ""
				for _, r := range c.DNS {
					if strings.EqualFold(r.Name, s.Selector+"._domainkey."+s.Domain) {
						published = r.DKIMKey
					}
				}
				// go-msgauth refuses rsa-sha1 and every l= on principle.
				checkable := s.Algorithm != "rsa-sha1" && !s.BodyLength
				want := published == s.Key && !tampered
				if checkable && (v.Err == nil) != want {
					t.Errorf("signature d=%s s=%s key=%s (published %q): err %v, want pass=%v", s.Domain, s.Selector, s.Key, published, v.Err, want)
				}
			}
		})
	}
}

// TestBuildGolden pins the whole built message of a few cases: RSA
// PKCS #1 v1.5 and Ed25519 signatures are deterministic, so any change in
// layout, canonicalization or hashing shows up here.
func TestBuildGolden(t *testing.T) {
	cases, dir := loadAll(t)
	now := mustTime("2026-06-01T12:00:00Z")
	for _, id := range []string{"002-", "042-", "045-", "220-"} {
		c := findCase(t, cases, id)
		t.Run(c.ID, func(t *testing.T) {
			msg, err := c.Build(filepath.Join(dir, "keys"), now)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", c.ID+".eml")
			if *update {
				if err := os.WriteFile(path, msg, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if !bytes.Equal(msg, want) {
				t.Errorf("built message differs from %s:\n%s", path, msg)
			}
		})
	}
}

func TestLoadStrict(t *testing.T) {
	const env = `"envelope": {"client_ip": "192.0.2.1", "helo": "h.test", "mail_from": "a@b.test"}`
	const msg = `"message": {"headers": [["From", "a@b.test"]], "body": "x\n"}`
	valid := `{"title": "t", "dns": [], ` + env + `, ` + msg + `, "expect": {"smtp": "accept"}}`
	tests := []struct {
		name, json string
		wantErr    bool
	}{
		{"valid", valid, false},
		{"valid with id and alternatives", `{"id": "x", "title": "t", "dns": [{"name": "a.test", "type": "TXT", "value": "v"}], ` + env + `, ` + msg + `, "expect": [{"smtp": ["accept", "tempfail"], "ar": {"dmarc": "absent"}}, {"queue": "none"}], "advisory": {"forged_ar_removed": true}}`, false},
		{"unknown top key", strings.Replace(valid, `"title"`, `"bogus": 1, "title"`, 1), true},
		{"unknown key in expect", strings.Replace(valid, `{"smtp": "accept"}`, `{"smtp": "accept", "smpt": "x"}`, 1), true},
		{"unknown key in alternative", strings.Replace(valid, `{"smtp": "accept"}`, `[{"smtp": "accept"}, {"qeue": "none"}]`, 1), true},
		{"unknown key in ar", strings.Replace(valid, `{"smtp": "accept"}`, `{"ar": {"dmarc": "pass", "arc": "pass"}}`, 1), true},
		{"unknown key in dns", strings.Replace(valid, `"dns": []`, `"dns": [{"name": "a.test", "type": "TXT", "valeu": "x"}]`, 1), true},
		{"unknown key in envelope", strings.Replace(valid, `"helo"`, `"ehlo": "x", "helo"`, 1), true},
		{"unknown key in message", strings.Replace(valid, `"body"`, `"bodysize": 3, "body"`, 1), true},
		{"unknown key in dkim", strings.Replace(valid, `"dns"`, `"dkim": [{"domain": "b.test", "selector": "s", "key": "rsa2048", "l": 1}], "dns"`, 1), true},
		{"id differs from file", strings.Replace(valid, `"title"`, `"id": "y", "title"`, 1), true},
		{"missing title", strings.Replace(valid, `"title": "t", `, ``, 1), true},
		{"missing dns", strings.Replace(valid, `"dns": [], `, ``, 1), true},
		{"missing expect", strings.Replace(valid, `, "expect": {"smtp": "accept"}`, ``, 1), true},
		{"missing mail_from", strings.Replace(valid, `, "mail_from": "a@b.test"`, ``, 1), true},
		{"bad client_ip", strings.Replace(valid, `192.0.2.1`, `300.1.1.1`, 1), true},
		{"three-element header", strings.Replace(valid, `["From", "a@b.test"]`, `["From", "a@b.test", "x"]`, 1), true},
		{"header line break", strings.Replace(valid, `"a@b.test"]`, `"a@b.test\nBcc: x"]`, 1), true},
		{"unknown smtp value", strings.Replace(valid, `"accept"`, `"accepted"`, 1), true},
		{"empty alternatives", strings.Replace(valid, `{"smtp": "accept"}`, `[]`, 1), true},
		{"empty value list", strings.Replace(valid, `"accept"`, `[]`, 1), true},
		{"bad algorithm", strings.Replace(valid, `"dns"`, `"dkim": [{"domain": "b.test", "selector": "s", "key": "rsa2048", "algorithm": "rsa-md5"}], "dns"`, 1), true},
		{"key path traversal", strings.Replace(valid, `"dns"`, `"dkim": [{"domain": "b.test", "selector": "s", "key": "../x"}], "dns"`, 1), true},
		{"negative body_size", strings.Replace(valid, `"body"`, `"body_size": -1, "body"`, 1), true},
		{"huge body_size", strings.Replace(valid, `"body"`, `"body_size": 1000000000000, "body"`, 1), true},
		{"trailing data", valid + `{}`, true},
		{"not json", `{"title": `, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse([]byte(tt.json), "x")
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && (c.ID != "x" || c.Envelope.ClientName != "h.test" || c.Envelope.Rcpt[0] != DefaultRcpt) {
				t.Errorf("defaults: %+v", c)
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("missing file accepted")
	}
	big := filepath.Join(dir, "big.json")
	if err := os.WriteFile(big, bytes.Repeat([]byte(" "), maxCaseFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil {
		t.Error("oversized file accepted")
	}
	if _, err := LoadDir(dir); err == nil {
		t.Error("directory without cases/ accepted")
	}
}
