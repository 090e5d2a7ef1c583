package image

import (
	"fmt"
	"runtime"
	"strings"
)

// ParseArch accepts an architecture in Debian spelling (amd64, arm64) or
// kernel spelling (x86_64, aarch64), case-insensitively.
func ParseArch(s string) (Arch, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "amd64", "x86_64", "x86-64":
		return ArchAMD64, nil
	case "arm64", "aarch64":
		return ArchARM64, nil
	}
	return "", fmt.Errorf("%w: unknown architecture %q (want amd64/x86_64 or arm64/aarch64)", ErrInvalidSpec, Printable(s))
}

// HostArch is the architecture this program runs on; for any GOARCH other
// than amd64 and arm64 it returns Arch(runtime.GOARCH), which no built-in
// image publishes.
func HostArch() Arch {
	if a, err := ParseArch(runtime.GOARCH); err == nil {
		return a
	}
	return Arch(runtime.GOARCH)
}
