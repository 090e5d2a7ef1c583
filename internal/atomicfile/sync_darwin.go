package atomicfile

import (
	"os"

	"golang.org/x/sys/unix"
)

// Sync makes f's data and metadata durable. On macOS fsync(2) only hands
// the data to the drive, whose cache may lose it on power failure;
// fcntl(F_FULLFSYNC) also flushes that cache. os.File.Sync does the same
// but falls back to fsync only on ENOTSUP, so a volume that answers
// F_FULLFSYNC otherwise (see fullSync) would fail every publish: this is
// why every publish path calls Sync rather than os.File.Sync.
func Sync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return &os.PathError{Op: "sync", Path: f.Name(), Err: err}
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = fullSync(
			func() error { _, err := unix.FcntlInt(fd, unix.F_FULLFSYNC, 0); return err },
			func() error { return unix.Fsync(int(fd)) })
	}); err != nil {
		return &os.PathError{Op: "sync", Path: f.Name(), Err: err}
	}
	if serr != nil {
		return &os.PathError{Op: "sync", Path: f.Name(), Err: serr}
	}
	return nil
}
