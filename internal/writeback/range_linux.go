package writeback

import (
	"os"

	"golang.org/x/sys/unix"
)

// Range asks the kernel to start writing the dirty pages of [off, off+n) of f
// to disk without waiting for them (n == 0: to the end of the file). It is
// sync_file_range(SYNC_FILE_RANGE_WRITE), through x/sys/unix, which passes
// the 64-bit offsets right on every architecture (32-bit ones split them;
// arm and ppc call sync_file_range2 with its other argument order).
func Range(f *os.File, off, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "sync_file_range", Path: f.Name(), Err: serr}
	}
	return nil
}
