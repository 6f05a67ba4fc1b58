package main

import (
	"runtime/debug"
	"testing"
)

// TestVersionOf guards how the version is read from the build: -ldflags
// first, then the module version, then "dev"; the revision and whether the
// tree was modified whenever the go command recorded them.
func TestVersionOf(t *testing.T) {
	bi := func(v string, settings ...string) *debug.BuildInfo {
		b := &debug.BuildInfo{Main: debug.Module{Path: "github.com/innovartx/deskgate", Version: v}}
		for i := 0; i+1 < len(settings); i += 2 {
			b.Settings = append(b.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return b
	}
	const rev = "633976ffe135104a9fba3d314d731873517815b4"
	for _, tc := range []struct {
		ldflags      string
		bi           *debug.BuildInfo
		version, rev string
	}{
		{"", nil, "dev", ""},
		{"v1.2.3", nil, "v1.2.3", ""},
		{"", bi("(devel)"), "dev", ""},
		{"", bi(""), "dev", ""},
		{"v1.2.3", bi("v0.0.0-20261205012453-633976ffe135", "vcs.revision", rev), "v1.2.3", rev},
		{"", bi("v1.4.0", "vcs.revision", rev, "vcs.modified", "false"), "v1.4.0", rev},
		{"", bi("v0.0.0-20261205012453-633976ffe135+dirty", "vcs.revision", rev, "vcs.modified", "true"), "v0.0.0-20261205012453-633976ffe135+dirty", rev + ", modified"},
		{"", bi("(devel)", "vcs.revision", rev), "dev", rev},
	} {
		v, r := versionOf(tc.ldflags, tc.bi)
		if v != tc.version || r != tc.rev {
			t.Errorf("versionOf(%q, %+v) = %q, %q; want %q, %q", tc.ldflags, tc.bi, v, r, tc.version, tc.rev)
		}
	}
}
