package e2e

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPostfixSnippet feeds deploy/postfix/main.cf.snippet to the installed
// postconf, which warns about unknown parameters and bad values, so a typo
// in the documented settings fails here rather than on a mail server.
func TestPostfixSnippet(t *testing.T) {
	postconf, err := lookPath("postconf")
	if err != nil {
		if e2eRequired() {
			t.Fatalf("DMARC_E2E_REQUIRED=1 but %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	snippet, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "postfix", "main.cf.snippet"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.cf"), snippet, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "master.cf"), []byte(masterCfBase), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, postconf, "-c", dir, "-n")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("postconf -n: %v\n%s", err, stderr.Bytes())
	}
	if stderr.Len() > 0 {
		t.Errorf("postconf complains about the snippet:\n%s", stderr.Bytes())
	}
	got := map[string]string{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " = "); ok {
			got[k] = v
		}
	}
	for name, want := range map[string]string{
		"smtpd_milters":         "inet:127.0.0.1:8893",
		"milter_default_action": "accept",
		"milter_protocol":       "6",
	} {
		if got[name] != want {
			t.Errorf("%s = %q, want %q", name, got[name], want)
		}
	}
}
