package clone

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// cowClone makes tmp share all of base's extents with FICLONE. The errors
// of a file system that cannot (ext4, tmpfs: EOPNOTSUPP or EINVAL; another
// file system: EXDEV; no such ioctl: ENOTTY) are errUnsupported.
func cowClone(base, tmp string) (Method, error) {
	src, err := os.Open(base)
	if err != nil {
		return "", err
	}
	defer src.Close()
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		if cowUnsupported(err) {
			return "", fmt.Errorf("%w: FICLONE: %w", errUnsupported, err)
		}
		return "", fmt.Errorf("FICLONE: %w", err)
	}
	return MethodReflink, dst.Close()
}

func cowUnsupported(err error) bool {
	for _, e := range []error{unix.EXDEV, unix.EOPNOTSUPP, unix.EINVAL, unix.ENOTTY, unix.ENOSYS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
