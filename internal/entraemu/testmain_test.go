package entraemu_test

import (
	"os"
	"testing"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// TestMain removes the emulator binary emutest built for this test process.
func TestMain(m *testing.M) {
	code := m.Run()
	emutest.RemoveBuild()
	os.Exit(code)
}
