package auth

import (
	"strings"
	"testing"
)

// FuzzDKIMTagList feeds arbitrary text to the RFC 6376 §3.2 tag-list
// parser and to everything built on it (signature tags, our l= checks, key
// records), and checks what the header hash relies on: each value is the
// exact text at its offsets, and deleting the b= value (RFC 6376 §3.7)
// leaves every other tag as it was.
func FuzzDKIMTagList(f *testing.F) {
	for _, s := range []string{
		"v=1; a=rsa-sha256; c=relaxed/simple; d=x.test; s=sel; l=12; h=from:to; bh=AAAA; b=AA\r\n\t AA",
		"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
		"a=1;;b=2;", " ; ", "=;", "a", "a=b=c", "9a=1", "a=1;a=2", "b=", "bh=x; b = y ;",
		"v=1; b=AAAA; l=99999999999999999999999999999; x=1; t=2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tags, err := parseTagList(s)
		seen := map[string]bool{}
		for _, tg := range tags {
			if !validTagName(tg.name) || seen[tg.name] {
				t.Fatalf("bad or duplicate name %q", tg.name)
			}
			seen[tg.name] = true
			if s[tg.vStart:tg.vEnd] != tg.value || strings.Contains(tg.value, ";") {
				t.Fatalf("value %q at %d:%d", tg.value, tg.vStart, tg.vEnd)
			}
			if tg.value != "" && (isFWS(tg.value[0]) || isFWS(tg.value[len(tg.value)-1])) {
				t.Fatalf("value %q not trimmed", tg.value)
			}
		}
		if len(tags) > maxTags {
			t.Fatalf("%d tags", len(tags))
		}
		if err == nil {
			for _, tg := range tags {
				if tg.name != "b" {
					continue
				}
				again, err := parseTagList(s[:tg.vStart] + s[tg.vEnd:])
				if err != nil || len(again) != len(tags) {
					t.Fatalf("b= emptied: %v, %d tags", err, len(again))
				}
				for i, a := range again {
					w := tags[i].value
					if a.name == "b" {
						w = ""
					}
					if a.name != tags[i].name || a.value != w {
						t.Fatalf("b= emptied changed %q=%q", a.name, a.value)
					}
				}
			}
		}
		st := parseSigTags(s)
		if st.invalid == nil && st.res.Domain == "" {
			t.Fatal("valid signature without domain")
		}
		if ls, err := newLengthSig(0, s); err == nil {
			if ls.domain == "" || ls.selector == "" || len(ls.b) == 0 || len(ls.bh) == 0 {
				t.Fatalf("accepted %+v", ls)
			}
			// The header hash input carries b= with its value deleted.
			signed, err := parseTagList(strings.TrimPrefix(ls.sigField, "DKIM-Signature:"))
			if err != nil || tagMap(signed)["b"] != "" || len(signed) != len(tags) {
				t.Fatalf("signature field %q: %v", ls.sigField, err)
			}
		} else if _, ok := err.(*sigError); !ok {
			t.Fatalf("error type %T", err)
		}
		for _, k := range []string{"rsa", "ed25519"} {
			if key, _, err := parseKeyRecord(s, k); (key == nil) == (err == nil) {
				t.Fatalf("key %v, err %v", key, err)
			}
		}
	})
}

// FuzzBodyCanon checks the streamed body canonicalization (RFC 6376
// §3.4.3, §3.4.4) against itself fed whole, for every chunk size, and
// against the line-based reference when the body has no bare CR.
func FuzzBodyCanon(f *testing.F) {
	for _, s := range []string{"", "\r\n", " C \r\nD \t E\r\n\r\n\r\n", "a\r", "a \r b\n\n", lengthBody} {
		f.Add(s, uint8(1))
	}
	f.Fuzz(func(t *testing.T, body string, chunk uint8) {
		if len(body) > 4096 {
			return
		}
		for _, relaxed := range []bool{false, true} {
			want, _ := streamCanon(body, relaxed, len(body)+1)
			if !strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\r") {
				if ref := refCanonBody(body, relaxed); ref != want {
					t.Fatalf("relaxed=%v %q: got %q, reference %q", relaxed, body, want, ref)
				}
			}
			got, n := streamCanon(body, relaxed, int(chunk)+1)
			if got != want || n != uint64(len(got)) {
				t.Fatalf("relaxed=%v chunk=%d %q: got %q, whole %q", relaxed, int(chunk)+1, body, got, want)
			}
		}
	})
}
