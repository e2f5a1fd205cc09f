package testcase

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// casesDir finds the published cases: $DMARC_CASES_DIR, else shared/cases
// beside the clone. Tests that need them skip, loudly, when neither exists
// (and fail under CI).
func casesDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("DMARC_CASES_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "shared", "cases")
	}
	if _, err := os.Stat(filepath.Join(dir, "cases")); err != nil {
		if os.Getenv("CI") != "" {
			// CI puts shared/ beside the clone: missing there is a fault.
			t.Fatalf("acceptance cases not found at %s (set DMARC_CASES_DIR): %v", dir, err)
		}
		t.Skipf("acceptance cases not found at %s (set DMARC_CASES_DIR): %v", dir, err)
	}
	return dir
}

func keyDir(t testing.TB) string {
	return filepath.Join(casesDir(t), "keys")
}

// lookupFromCase serves a case's TXT data to go-msgauth's verifier, the way
// the zone would.
func lookupFromCase(t testing.TB, c *Case, keys string) func(string) ([]string, error) {
	t.Helper()
	txt := map[string][]string{}
	for _, r := range c.DNS {
		if !strings.EqualFold(r.Type, "TXT") {
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(r.Name, "."))
		switch {
		case r.DKIMKey != "":
			b, err := os.ReadFile(filepath.Join(keys, r.DKIMKey+".txt"))
			if err != nil {
				t.Fatal(err)
			}
			txt[name] = append(txt[name], strings.TrimSpace(string(b)))
		case r.Strings != nil:
			txt[name] = append(txt[name], strings.Join(r.Strings, ""))
		default:
			txt[name] = append(txt[name], r.Value)
		}
	}
	return func(name string) ([]string, error) {
		return txt[strings.ToLower(strings.TrimSuffix(name, "."))], nil
	}
}
