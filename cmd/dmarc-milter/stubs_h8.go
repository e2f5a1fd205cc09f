package main

// Placeholders replaced by the operator tooling (config, record, metrics);
// each says plainly that it is missing rather than pretending.

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/milter"
)

func configCmd(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "dmarc-milter config: not built yet")
	return 2
}

func recordCmd(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "dmarc-milter record: not built yet")
	return 2
}

func startMetrics(addr string, srv *milter.Server, res *dnsres.Resolver, logger *slog.Logger) (func(), error) {
	return nil, fmt.Errorf("metrics: not built yet")
}
