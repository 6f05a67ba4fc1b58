package main

// The version the binary reports: -version, the start-up log and
// deskgate_build_info.

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// buildVersion is the version of the binary: the -ldflags stamp, else the
// module version that `go build` recorded (a tag, or a pseudo-version
// naming the commit, "+dirty" for a modified tree), else "dev" (`go run`,
// -buildvcs=false, no VCS).
func buildVersion() string {
	bi, _ := debug.ReadBuildInfo()
	v, _ := versionOf(version, bi)
	return v
}

// versionOf returns the version of a binary stamped with ldflags (may be
// "") and built as bi (may be nil), and, when `go build` recorded it, the
// VCS revision it was built from: "<revision>" or "<revision>, modified".
func versionOf(ldflags string, bi *debug.BuildInfo) (v, revision string) {
	v = ldflags
	if bi == nil {
		if v == "" {
			v = "dev"
		}
		return v, ""
	}
	if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	if v == "" {
		v = "dev"
	}
	var modified bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if revision != "" && modified {
		revision += ", modified"
	}
	return v, revision
}

// versionLine is what -version prints: "deskgate <version> <go version>",
// then "(commit <revision>)" when the build recorded one.
func versionLine() string {
	bi, _ := debug.ReadBuildInfo()
	v, rev := versionOf(version, bi)
	line := fmt.Sprintf("deskgate %s %s", v, runtime.Version())
	if rev != "" {
		line += " (commit " + rev + ")"
	}
	return line
}
