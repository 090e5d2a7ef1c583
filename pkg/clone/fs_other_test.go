//go:build !linux

package clone

import "testing"

// mountFS: the test file systems (XFS, btrfs, ext4) are loop-mounted on
// Linux only; macOS's APFS has its own test (clone_darwin_test.go).
func mountFS(t *testing.T, kind string) string {
	t.Skipf("loop-mounted %s: Linux only", kind)
	return ""
}

func sharedBytes(t *testing.T, path string) (shared, mapped int64) {
	t.Skip("FIEMAP: Linux only")
	return 0, 0
}
