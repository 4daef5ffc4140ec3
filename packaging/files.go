// Package packaging carries the service definitions shipped with agentidd (the systemd user unit and the launchd
// agent). They are embedded so that `agentidd service install` renders its unit from the very file the packages
// install: the hardening cannot drift between the two.
package packaging

import _ "embed"

//go:embed systemd/agentidd.service
var systemdUnit string

//go:embed launchd/dev.agentidd.plist
var launchdPlist string

// SystemdUnit returns packaging/systemd/agentidd.service, the systemd --user unit.
func SystemdUnit() string { return systemdUnit }

// LaunchdPlist returns packaging/launchd/dev.agentidd.plist, the LaunchAgent with __HOME__ and __AGENTIDD__
// placeholders.
func LaunchdPlist() string { return launchdPlist }
