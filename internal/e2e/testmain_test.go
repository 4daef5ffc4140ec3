package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/agentidd/agentidd/internal/entraemu/emutest"
)

// TestMain removes the binaries this test process built (agentidd, demo agent, emulator).
func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range []string{binDir, filepath.Dir(execProbePath)} {
		if dir != "" && dir != "." {
			_ = os.RemoveAll(dir)
		}
	}
	emutest.RemoveBuild()
	os.Exit(code)
}
