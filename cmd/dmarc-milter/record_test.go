package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

func startRecordDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	z := dnstest.NewZone(dnstest.Options{})
	recs, err := dnstest.LoadFile("testdata/record/zone.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Add(recs...); err != nil {
		t.Fatal(err)
	}
	s, err := dnstest.Start(z)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var dnsAddrRE = regexp.MustCompile(`127\.0\.0\.1:\d+`)

// TestRecordGolden runs `dmarc-milter record` against the in-process DNS
// server and compares the exit code and whole output with golden files
// (go test -run TestRecordGolden -update rewrites them).
func TestRecordGolden(t *testing.T) {
	dns := startRecordDNS(t)
	tests := []struct {
		name string
		args []string
		rc   int
	}{
		{"valid", []string{"good.example"}, 0},
		{"trailing-dot", []string{"good.example."}, 0},
		{"valid-subdomain", []string{"www.good.example"}, 0},
		{"broken-tags", []string{"broken-tags.example"}, 0},
		{"two-records", []string{"sub.twoorg.example"}, 0},
		{"two-records-rfc7489", []string{"-spec", "rfc7489", "sub.twoorg.example"}, 1},
		{"cname", []string{"alias.example"}, 0},
		{"inherited-existing", []string{"mail.inherit.example"}, 0},
		{"inherited-nonexistent", []string{"nowhere.mail.inherit.example"}, 0},
		{"inherited-rfc7489", []string{"-spec", "rfc7489", "mail.inherit.example"}, 0},
		{"servfail", []string{"fail.example"}, 2},
		{"servfail-below", []string{"www.fail.example"}, 2},
		{"none", []string{"nothing.example"}, 1},
		{"p-none-no-rua", []string{"lax.example"}, 0},
		{"missing-p", []string{"nop.example"}, 0},
		{"missing-p-rfc7489", []string{"-spec", "rfc7489", "nop.example"}, 0},
		{"psd-on-non-psd", []string{"psd.example"}, 0},
		{"unusable", []string{"unusable.example"}, 1},
		{"invalid-sp", []string{"badsp.example"}, 0},
		{"json", []string{"-json", "sub.twoorg.example"}, 0},
		{"json-servfail", []string{"-json", "fail.example"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append([]string{"-dns", dns.Addr(), "-dns-timeout", "500ms"}, tt.args...)
			rc := recordCmd(args, &out, &errb)
			if rc != tt.rc {
				t.Errorf("exit %d, want %d; stderr %q\n%s", rc, tt.rc, errb.String(), out.String())
			}
			got := dnsAddrRE.ReplaceAll(out.Bytes(), []byte("<dns>"))
			if bytes.HasPrefix(got, []byte("{")) {
				var v map[string]any
				if err := json.Unmarshal(got, &v); err != nil {
					t.Errorf("-json output is not JSON: %v", err)
				}
			}
			path := filepath.Join("testdata", "record", tt.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test -update writes it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestRecordQueries: discarded records are shown as published, re-read
// from the daemon's caching resolver rather than asked for twice.
func TestRecordQueries(t *testing.T) {
	dns := startRecordDNS(t)
	var out, errb bytes.Buffer
	if rc := recordCmd([]string{"-dns", dns.Addr(), "sub.twoorg.example"}, &out, &errb); rc != 0 {
		t.Fatalf("rc %d: %s", rc, errb.String())
	}
	if n := dns.QueriesFor("_dmarc.sub.twoorg.example", 16); n != 1 {
		t.Errorf("_dmarc.sub.twoorg.example asked %d times, want 1 (re-read from the cache)", n)
	}
	if !strings.Contains(out.String(), `"v=DMARC1; p=none"`) || strings.Contains(out.String(), "google-site-verification") {
		t.Errorf("discarded records not shown as published:\n%s", out.String())
	}
}

func TestRecordUsage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"a.example", "b.example"},
		{"-spec", "rfc1234", "a.example"},
		{"-dns", "127.0.0.1:1", "a..example"},
		{"-psl", "/nonexistent/psl.dat", "a.example"},
		{"-bogus", "a.example"},
	} {
		var out, errb bytes.Buffer
		if rc := recordCmd(args, &out, &errb); rc != 2 {
			t.Errorf("%q: exit %d, want 2 (stdout %q)", args, rc, out.String())
		}
		if errb.Len() == 0 && out.Len() == 0 {
			t.Errorf("%q: nothing said", args)
		}
	}
	var out, errb bytes.Buffer
	if rc := recordCmd([]string{"-h"}, &out, &errb); rc != 0 || !strings.Contains(errb.String(), "usage: dmarc-milter record") {
		t.Errorf("-h: %d %q", rc, errb.String())
	}
	if rc := run([]string{"record"}, &out, &errb); rc != 2 {
		t.Errorf("run record without a domain: %d", rc)
	}
}

// FuzzExplainTags: any record the parser accepts is explained without a
// panic, every published tag gets one known status, and the explanation
// agrees with the parser on what was used.
func FuzzExplainTags(f *testing.F) {
	recs, err := dnstest.LoadFile("testdata/record/zone.json")
	if err != nil {
		f.Fatal(err)
	}
	for _, r := range recs {
		if strings.HasPrefix(r.Value, "v=DMARC1") {
			f.Add(r.Value, false)
		}
	}
	f.Add("v=DMARC1;p=reject;p=none;;=;x;np=REJECT;psd=Y;rua=,", true)
	status := map[string]bool{"ok": true, "default": true, "invalid": true, "overridden": true, "unknown": true, "ignored": true, "duplicate": true, "malformed": true}
	f.Fuzz(func(t *testing.T, txt string, old bool) {
		spec := policy.SpecRFC9989
		if old {
			spec = policy.SpecRFC7489
		}
		rec, _ := policy.ParseRecord(txt, spec)
		if rec == nil {
			return
		}
		tags := explainTags(rec, spec, "example.com")
		seen := map[string]bool{}
		for _, tg := range tags {
			if !status[tg.Status] {
				t.Fatalf("tag %q: status %q", tg.Tag, tg.Status)
			}
			if tg.Meaning == "" {
				t.Fatalf("tag %q: no meaning", tg.Tag)
			}
			if tg.Status == "ok" && tg.Tag == "p" && !strings.EqualFold(tg.Value, string(rec.P)) {
				t.Fatalf("p=%q reported ok, parser used %q", tg.Value, rec.P)
			}
			if tg.Status == "ok" || tg.Status == "invalid" || tg.Status == "overridden" {
				if seen[tg.Tag] {
					t.Fatalf("tag %q explained as used twice", tg.Tag)
				}
				seen[tg.Tag] = true
			}
		}
	})
}
