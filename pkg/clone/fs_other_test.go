//go:build !linux

package clone

import "testing"

// mountFS: loop-mounting test file systems is done on Linux only.
func mountFS(t *testing.T, kind string) string {
	t.Skipf("loop-mounted %s: Linux only", kind)
	return ""
}

func sharedBytes(t *testing.T, path string) (shared, mapped int64) {
	t.Skip("FIEMAP: Linux only")
	return 0, 0
}
