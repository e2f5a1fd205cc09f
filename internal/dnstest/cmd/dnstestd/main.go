// Command dnstestd runs the dnstest server as a separate process, for shell
// and Postfix-based end-to-end tests that need the same DNS as the Go tests.
//
//	dnstestd -listen 127.0.0.1:5353 -zone base.json [-zone more.json] -keys DIR
//
// Each -zone file is a JSON array of records (the format of
// cases/zone/base.json) and is added as one unit, so conflicts between files
// are reported. It prints "listening on ADDR" once both UDP and TCP are
// ready and exits cleanly on SIGTERM or SIGINT.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "dnstestd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("dnstestd", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:5353", "address for UDP and TCP (port 0 picks one)")
	keys := fs.String("keys", "", "directory of DKIM key records NAME.txt for dkim_key")
	var zones multiFlag
	fs.Var(&zones, "zone", "zone file, a JSON array of records (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	z := dnstest.NewZone(dnstest.Options{KeyDir: *keys})
	for _, path := range zones {
		recs, err := dnstest.LoadFile(path)
		if err != nil {
			return err
		}
		if err := z.Add(recs...); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	// Subscribe before announcing readiness so that a SIGTERM sent right
	// after the line is read is not lost.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	srv, err := dnstest.Listen(z, *listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", srv.Addr())
	<-sig
	return srv.Close()
}
