package main

import (
	"fmt"
	"io"
)

func fromOpenDMARCCmd(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "dmarc-milter config from-opendmarc: not built yet")
	return 2
}
