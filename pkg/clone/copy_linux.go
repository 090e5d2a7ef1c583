package clone

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// copyKernel copies n bytes at off with copy_file_range: no data passes
// through user space. ok is false, with nothing copied, when the kernel
// or file system cannot (then the caller reads and writes).
func copyKernel(dst, src *os.File, off, n int64) (ok bool, err error) {
	roff, woff := off, off
	for n > 0 {
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(n), 0)
		if err != nil {
			if roff == off && (errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EXDEV) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
				return false, nil
			}
			return true, err
		}
		if c == 0 {
			return true, errShort
		}
		n -= int64(c)
	}
	return true, nil
}
