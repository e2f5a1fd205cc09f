package main

// Placeholder until the record subcommand lands.

import (
	"fmt"
	"io"
)

func recordCmd(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "dmarc-milter record: not built yet")
	return 2
}
