package testcase

import (
	"fmt"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// BuildZone builds one zone from the records of baseZone (a JSON file in
// the dns entry format, usually zone/base.json; "" for none) plus the dns
// list of every case. Each source is added as one unit, so two cases may
// declare the same RRset only with the same records, and data may not
// meet a behavior covering its type; either conflict is an error naming
// the case. dkim_key entries resolve to keyDir/NAME.txt.
func BuildZone(baseZone string, keyDir string, cases []*Case) (*dnstest.Zone, error) {
	z := dnstest.NewZone(dnstest.Options{KeyDir: keyDir})
	if baseZone != "" {
		recs, err := dnstest.LoadFile(baseZone)
		if err != nil {
			return nil, err
		}
		if err := z.Add(recs...); err != nil {
			return nil, fmt.Errorf("base zone %s: %w", baseZone, err)
		}
	}
	for _, c := range cases {
		if err := z.Add(c.DNS...); err != nil {
			return nil, fmt.Errorf("case %s: %w", c.ID, err)
		}
	}
	return z, nil
}
