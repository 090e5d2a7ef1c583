//go:build !linux

package testutil

import "testing"

// MountLoopFS: loop-mounted test file systems are made on Linux only.
func MountLoopFS(t testing.TB, kind string) string {
	t.Skipf("loop-mounted %s: Linux only", kind)
	return ""
}
