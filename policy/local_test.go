package policy

import "testing"

func TestLocalPolicyApply(t *testing.T) {
	allow, _ := NewDomainSet([]string{"Partner.Example.", "*.lists.example"})
	reject, _ := NewDomainSet([]string{"bank.example"})
	lp := &LocalPolicy{AllowFrom: allow, RejectFrom: reject}
	tests := []struct {
		name     string
		ev       Evaluation
		facts    LocalFacts
		wantDisp Policy
		wantType string
	}{
		{"allow exact", Evaluation{Result: ResultFail, FromDomain: "partner.example", Disposition: PolicyReject}, LocalFacts{}, PolicyNone, OverrideLocalPolicy},
		{"allow subdomain", Evaluation{Result: ResultFail, FromDomain: "a.lists.example", Disposition: PolicyQuarantine}, LocalFacts{}, PolicyNone, OverrideLocalPolicy},
		{"not a suffix match", Evaluation{Result: ResultFail, FromDomain: "notpartner.example", Disposition: PolicyReject}, LocalFacts{}, PolicyReject, ""},
		{"reject p=none", Evaluation{Result: ResultFail, FromDomain: "bank.example", Disposition: PolicyNone}, LocalFacts{}, PolicyReject, OverrideLocalPolicy},
		{"reject beats forwarder", Evaluation{Result: ResultFail, FromDomain: "mail.bank.example", Disposition: PolicyNone}, LocalFacts{Forwarder: "192.0.2.0/24"}, PolicyReject, OverrideLocalPolicy},
		{"forwarder", Evaluation{Result: ResultFail, FromDomain: "x.example", Disposition: PolicyReject}, LocalFacts{Forwarder: "192.0.2.0/24"}, PolicyNone, OverrideTrustedForwarder},
		{"mailing list", Evaluation{Result: ResultFail, FromDomain: "x.example", Disposition: PolicyQuarantine}, LocalFacts{MailingList: "lists.example"}, PolicyNone, OverrideMailingList},
		{"arc", Evaluation{Result: ResultFail, FromDomain: "x.example", Disposition: PolicyReject}, LocalFacts{ARCPass: "mx.up.example"}, PolicyNone, OverrideLocalPolicy},
		{"pass untouched", Evaluation{Result: ResultPass, FromDomain: "bank.example", Disposition: PolicyNone}, LocalFacts{}, PolicyNone, ""},
		{"temperror never rejected", Evaluation{Result: ResultTempError, FromDomain: "bank.example", Disposition: PolicyNone}, LocalFacts{}, PolicyNone, ""},
		{"already none: no override", Evaluation{Result: ResultFail, FromDomain: "x.example", Disposition: PolicyNone}, LocalFacts{Forwarder: "f"}, PolicyNone, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := tt.ev
			lp.Apply(&ev, tt.facts)
			if ev.Disposition != tt.wantDisp {
				t.Errorf("disposition %s, want %s", ev.Disposition, tt.wantDisp)
			}
			if tt.wantType == "" && len(ev.Overrides) != 0 || tt.wantType != "" && (len(ev.Overrides) != 1 || ev.Overrides[0].Type != tt.wantType) {
				t.Errorf("overrides %+v, want type %q", ev.Overrides, tt.wantType)
			}
			if ev.Result != tt.ev.Result {
				t.Errorf("result changed to %s", ev.Result)
			}
		})
	}
	var nilLP *LocalPolicy
	ev := Evaluation{Result: ResultFail, FromDomain: "x.example", Disposition: PolicyReject}
	nilLP.Apply(&ev, LocalFacts{Forwarder: "f"})
	if ev.Disposition != PolicyNone {
		t.Errorf("nil local policy with forwarder: %s", ev.Disposition)
	}
	if _, err := NewDomainSet([]string{"bad domain"}); err == nil {
		t.Error("bad domain accepted")
	}
}
