package clone

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mountFS makes a file system of the given type (xfs with reflink=1,
// btrfs, ext4) in a file, loop-mounts it and returns the mount point,
// unmounted at the end of the test. Where that is impossible (not root,
// no mkfs, no loop devices) the test is skipped — but not in CI, which
// installs what it needs and runs as root.
func mountFS(t *testing.T, kind string) string {
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

// sharedBytes returns how many bytes of path's extents the file system
// reports as shared with another file (FS_IOC_FIEMAP, FIEMAP_EXTENT_SHARED).
func sharedBytes(t *testing.T, path string) (shared, mapped int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const (
		fsIocFiemap   = 0xC020660B
		extentShared  = 0x2000
		extentLast    = 0x1
		hdrLen, extSz = 32, 56
		batch         = 256
	)
	buf := make([]byte, hdrLen+batch*extSz)
	le := binary.LittleEndian
	for start := uint64(0); ; {
		clear(buf)
		le.PutUint64(buf[0:], start)
		le.PutUint64(buf[8:], ^uint64(0)-start)
		le.PutUint32(buf[16:], 1) // FIEMAP_FLAG_SYNC
		le.PutUint32(buf[24:], batch)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			t.Fatalf("FIEMAP %s: %v", path, e)
		}
		n := le.Uint32(buf[20:])
		if n == 0 {
			return shared, mapped
		}
		for i := range n {
			e := buf[hdrLen+int(i)*extSz:]
			logical, length, flags := le.Uint64(e[0:]), le.Uint64(e[16:]), le.Uint32(e[40:])
			mapped += int64(length)
			if flags&extentShared != 0 {
				shared += int64(length)
			}
			start = logical + length
			if flags&extentLast != 0 {
				return shared, mapped
			}
		}
	}
}
