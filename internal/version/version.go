// Package version says which build of vmprep is running: the module version
// and VCS revision the Go toolchain stamps into every binary, or a release
// number set at link time.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// release is set at link time for a release build:
//
//	go build -ldflags "-X github.com/vmprep/vmprep/internal/version.release=1.2.3"
//
// Left empty, the build info decides.
var release string

// Info is what a binary knows of its build.
type Info struct {
	Version  string // "1.2.3", a module pseudo-version, or "dev"
	Revision string // VCS commit, when built from a checkout
	Time     string // commit time (RFC 3339), when known
	Modified bool   // built from a checkout with uncommitted changes
	Go       string // toolchain, e.g. "go1.26.8"
	Platform string // GOOS/GOARCH
}

// Read returns this binary's build information.
func Read() Info {
	info := Info{Version: "dev", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		// "(devel)" is what a build inside the module's own checkout says.
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			info.Version = strings.TrimPrefix(v, "v")
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if release != "" {
		info.Version = strings.TrimPrefix(release, "v")
	}
	return info
}

// Short is the version for a User-Agent, a metric label or a log line:
// "1.2.3", or "dev+<revision>[-dirty]" for a build from a checkout.
func (i Info) Short() string {
	if i.Version != "dev" || i.Revision == "" {
		return i.Version
	}
	rev := i.Revision
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if i.Modified {
		rev += "-dirty"
	}
	return "dev+" + rev
}

// String is the long form `vmprep version` prints.
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vmprep %s\n", i.Version)
	if i.Revision != "" {
		mod := ""
		if i.Modified {
			mod = " (with uncommitted changes)"
		}
		fmt.Fprintf(&b, "revision %s%s\n", i.Revision, mod)
	}
	if i.Time != "" {
		fmt.Fprintf(&b, "committed %s\n", i.Time)
	}
	fmt.Fprintf(&b, "go %s %s\n", i.Go, i.Platform)
	return b.String()
}

// Short is Read().Short(): the running build's version in one word.
func Short() string { return Read().Short() }
