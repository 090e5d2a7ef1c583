//go:build linux || darwin

package download

import (
	"errors"

	"golang.org/x/sys/unix"
)

// spaceShortage returns err if it says the disk (or the user's quota, or the
// file size limit) has no room for the file, and nil otherwise: a file
// system that cannot reserve blocks (tmpfs before 2.6.x, NFS, SMB, FAT)
// just downloads without a reservation.
func spaceShortage(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EFBIG) {
		return err
	}
	return nil
}

// reserveContiguousFirst asks attempt for length more bytes in one piece,
// then, if that fails, in any number of pieces (a fragmented volume has the
// room, just not contiguous); only a shortage of space is an error.
func reserveContiguousFirst(length int64, attempt func(contiguous bool) error) error {
	if length <= 0 {
		return nil
	}
	if err := attempt(true); err == nil {
		return nil
	}
	return spaceShortage(attempt(false))
}
