package qcow2

import (
	"os"
	"syscall"
)

const syncFileRangeWrite = 0x2 // SYNC_FILE_RANGE_WRITE

// startWriteback asks the kernel to begin writing [off, off+n) of f to disk
// without waiting, so the final fsync has little left to do and disk I/O
// overlaps decompression. Errors are ignored: fsync reports real failures.
func startWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _, _ = syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, fd, uintptr(off), uintptr(n), syncFileRangeWrite, 0, 0)
	})
}
