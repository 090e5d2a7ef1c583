package download

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// preallocate reserves disk blocks for the whole file, as fallocate with
// KEEP_SIZE does on Linux: fcntl(F_PREALLOCATE) from the physical end of
// the file, contiguous if the volume can, else in pieces. The file's size
// is not changed (no ftruncate): a partial download is resumed from its
// size, which must stay the count of bytes written. The blocks stay
// reserved while the file is open, which is for the whole download.
func preallocate(f *os.File, size int64) error {
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	allocated := fi.Size()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		allocated = st.Blocks * 512 // the physical end of file F_PEOFPOSMODE counts from
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = reserveContiguousFirst(size-allocated, func(contiguous bool) error {
			fst := unix.Fstore_t{Flags: unix.F_ALLOCATEALL, Posmode: unix.F_PEOFPOSMODE, Length: size - allocated}
			if contiguous {
				fst.Flags |= unix.F_ALLOCATECONTIG
			}
			return unix.FcntlFstore(fd, unix.F_PREALLOCATE, &fst)
		})
	}); err != nil {
		return nil
	}
	return ferr
}
