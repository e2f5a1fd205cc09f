package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPSL(t *testing.T) {
	l, err := LoadPSL(filepath.Join("testdata", "psl.dat"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, suffix, org string }{
		{"example.com", "com", "example.com"},
		{"a.b.example.com", "com", "example.com"},
		{"com", "com", "com"},
		{"shop.brand.co.test", "co.test", "brand.co.test"},
		{"co.test", "co.test", "co.test"},
		{"q.test", "test", "q.test"},
		{"a.b.ck", "b.ck", "a.b.ck"},             // wildcard
		{"x.www.ck", "ck", "www.ck"},             // exception
		{"www.ck", "ck", "www.ck"},               // exception itself
		{"x.unlisted", "unlisted", "x.unlisted"}, // implicit "*"
		{"a.b.xn--55qx5d.cn", "xn--55qx5d.cn", "b.xn--55qx5d.cn"},
	}
	for _, tt := range tests {
		if got := l.PublicSuffix(tt.name); got != tt.suffix {
			t.Errorf("PublicSuffix(%s) = %s, want %s", tt.name, got, tt.suffix)
		}
		if got := pslOrgDomain(l, tt.name); got != tt.org {
			t.Errorf("org(%s) = %s, want %s", tt.name, got, tt.org)
		}
	}
}

func TestParsePSLErrors(t *testing.T) {
	for _, in := range []string{
		"",
		"// only comments\n",
		"com\nbad..rule\n",
		"com\n" + strings.Repeat("a", maxPSLLine+10) + "\n",
		"*.*.com\n",
	} {
		if _, err := ParsePSL(strings.NewReader(in)); err == nil {
			t.Errorf("ParsePSL(%.30q) accepted", in)
		}
	}
	if _, err := LoadPSL(filepath.Join(t.TempDir(), "missing.dat")); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}

// The bundled list gets normalised names (LIBRARIES.md: it is
// case-sensitive and needs A-labels).
func TestBundledPSL(t *testing.T) {
	for name, want := range map[string]string{
		"mail.example.co.uk": "example.co.uk",
		"example.com":        "example.com",
	} {
		if got := pslOrgDomain(bundledPSL{}, name); got != want {
			t.Errorf("org(%s) = %s, want %s", name, got, want)
		}
	}
}
