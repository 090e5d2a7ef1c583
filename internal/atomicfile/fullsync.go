//go:build linux || darwin

package atomicfile

import (
	"errors"

	"golang.org/x/sys/unix"
)

// fullSync calls full (F_FULLFSYNC) and, where the file system has no such
// operation, plain (fsync): SMB answers ENOTSUP, other network and FUSE
// file systems EINVAL or ENOTTY for an fcntl they do not know. Any other
// error (EIO, ENOSPC) is the answer. Both are retried on EINTR.
func fullSync(full, plain func() error) error {
	err := retryEINTR(full)
	for _, e := range []error{unix.ENOTSUP, unix.EOPNOTSUPP, unix.EINVAL, unix.ENOTTY, unix.ENOSYS} {
		if errors.Is(err, e) {
			return retryEINTR(plain)
		}
	}
	return err
}

func retryEINTR(call func() error) error {
	for {
		if err := call(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
