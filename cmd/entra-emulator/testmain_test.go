package main

import (
	"testing"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// TestMain removes the emulator binary emutest built for this test process.
func TestMain(m *testing.M) { emutest.Main(m) }
