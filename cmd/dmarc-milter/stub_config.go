package main

// Placeholder until the config subcommands land; says plainly that it is
// missing rather than pretending.

import (
	"fmt"
	"io"
)

func configCmd(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "dmarc-milter config: not built yet")
	return 2
}
