// Package osimpl links in the platform implementations of the OS being built for. Import it (blank) from main packages
// and tests that need real OS behaviour; everything else depends only on the interfaces in package platform.
package osimpl

import (
	// Each package is empty except on its own GOOS, where its init registers the implementations.
	_ "github.com/agentidd/agentidd/platform/darwin"
	_ "github.com/agentidd/agentidd/platform/linux"
	_ "github.com/agentidd/agentidd/platform/windows"
)
