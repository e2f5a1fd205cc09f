package domain

import (
	"errors"
	"testing"
)

func TestNormalize(t *testing.T) {
	tests := []struct {
		in, want string // want "" means ErrInvalid
	}{
		{"Mail.Example.COM.", "mail.example.com"},
		{"mail.example.com", "mail.example.com"},
		{" bank.test ", "bank.test"},
		{"bücher.test", "xn--bcher-kva.test"},
		{"_dmarc.bank.test", "_dmarc.bank.test"},
		// RFC 3490 §3.1: U+3002, U+FF0E and U+FF61 separate labels like
		// ".", also as the trailing dot of an absolute name.
		{"bank\u3002test", "bank.test"},
		{"bank.test\u3002", "bank.test"},
		{"bank.test\uff0e", "bank.test"},
		{"bank.test\uff61", "bank.test"},
		{"B\u00fccher\uff0etest\u3002", "xn--bcher-kva.test"},
		// One trailing dot, whichever form it takes; two leave an empty label.
		{"bank.test..", ""},
		{"bank.test.\u3002", ""},
		{"bank.test\u3002\u3002", ""},
		{"bank.test\u3002.", ""},
		{".", ""},
		{"\u3002", ""},
		{"", ""},
		{"bank..test", ""},
		{"bank.test\u2488", ""}, // disallowed rune (UTS 46 maps it to "1.")
		{"a b.test", ""},
	}
	for _, tt := range tests {
		got, err := Normalize(tt.in)
		if tt.want == "" {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Normalize(%q) = %q, %v; want ErrInvalid", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
