package main

// Placeholder until the metrics listener lands.

import (
	"fmt"
	"log/slog"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/milter"
)

func startMetrics(addr string, srv *milter.Server, res *dnsres.Resolver, logger *slog.Logger) (func(), error) {
	return nil, fmt.Errorf("metrics: not built yet")
}
