//go:build linux

package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// MountLoopFS makes a file system of the given type (xfs with reflink=1,
// btrfs, ext4) in a file, loop-mounts it and returns the mount point,
// unmounted at the end of the test. Where that is impossible (not root,
// no mkfs, no loop devices) the test is skipped — but not in CI, which
// installs what it needs and runs as root.
func MountLoopFS(t testing.TB, kind string) string {
	t.Helper()
	skip := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI: "+format, args...)
		}
		t.Skipf(format, args...)
	}
	if os.Geteuid() != 0 {
		skip("loop mounts need root")
	}
	mkfs := map[string][]string{
		"xfs":   {"mkfs.xfs", "-q", "-m", "reflink=1"},
		"btrfs": {"mkfs.btrfs", "-q"},
		"ext4":  {"mkfs.ext4", "-q", "-F"},
	}[kind]
	if _, err := exec.LookPath(mkfs[0]); err != nil {
		skip("%s: %v", mkfs[0], err)
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, kind+".img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err == nil {
		err = f.Truncate(400 << 20) // XFS needs 300 MiB
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs[0], append(mkfs[1:], img)...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", mkfs[0], err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		skip("mount -o loop %s: %v\n%s", kind, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}
