package auth

import (
	"reflect"
	"testing"
)

func TestARResults(t *testing.T) {
	tests := []struct {
		in   string
		id   string
		want map[string][]string
		ok   bool
	}{
		{" mx.up.example; arc=pass (as.1.up.example=pass) smtp.remote-ip=192.0.2.1; dmarc=fail header.from=x.test", "mx.up.example",
			map[string][]string{"arc": {"pass"}, "dmarc": {"fail"}}, true},
		{"mx.up.example 1; spf/1=PASS smtp.mailfrom=a@b.test;\r\n\tdkim = pass (2048-bit key; unprotected) header.d=b.test", "mx.up.example",
			map[string][]string{"spf": {"pass"}, "dkim": {"pass"}}, true},
		{`mx.up.example; arc="pass"; none`, "mx.up.example", map[string][]string{"arc": {"pass"}}, true},
		{"mx.up.example; (arc=pass); x", "mx.up.example", map[string][]string{}, true},
		{"mx.up.example; arc=(c)pass", "mx.up.example", map[string][]string{"arc": {"pass"}}, true},
		{"arc=pass", "", nil, false},
		{"", "", nil, false},
	}
	for _, tt := range tests {
		id, got, ok := ARResults(tt.in)
		if id != tt.id || ok != tt.ok || (tt.ok && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("ARResults(%q) = %q, %v, %v; want %q, %v, %v", tt.in, id, got, ok, tt.id, tt.want, tt.ok)
		}
	}
}

func FuzzARResults(f *testing.F) {
	f.Add("mx.up.example; arc=pass (c;d) x.y=z; dmarc=fail")
	f.Add(`"a;b"; arc/1 = "pa;ss"`)
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1<<16 {
			return
		}
		id, res, ok := ARResults(s)
		if ok && id == "" {
			t.Fatal("ok without id")
		}
		for m := range res {
			if !isKeyword(m) {
				t.Fatalf("method %q", m)
			}
		}
	})
}
