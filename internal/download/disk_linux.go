package download

import (
	"os"

	"golang.org/x/sys/unix"
)

// preallocate reserves disk blocks for the whole file without changing its
// size, so that a full disk fails the download at once rather than after
// most of it has been transferred. Filesystems without fallocate are fine.
func preallocate(f *os.File, size int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = unix.Fallocate(int(fd), unix.FALLOC_FL_KEEP_SIZE, 0, size)
	}); err != nil {
		return nil
	}
	return spaceShortage(ferr)
}
