// Command agentidd is the per-user agent identity daemon and its CLI.
package main

import (
	"os"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}
