//go:build linux || darwin || freebsd

package sparsefile

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// FindsHoles says whether DataRegions asks the file system for holes here
// (lseek SEEK_DATA/SEEK_HOLE: Linux, and APFS, ZFS and UFS on macOS and
// FreeBSD), rather than answering the whole file.
const FindsHoles = true

// DataRegions calls yield, in order, for each [start, end) of the first
// size bytes of f that may hold data, skipping holes; where the file system
// cannot tell holes, the whole file is one region. It moves f's offset
// (callers read with ReadAt).
func DataRegions(f *os.File, size int64, yield Yield) error {
	return walk(size, func(off int64, data bool) (int64, error) {
		// unix has each platform's whence values: Linux's SEEK_DATA is 3,
		// macOS's and FreeBSD's is 4.
		whence := unix.SEEK_HOLE
		if data {
			whence = unix.SEEK_DATA
		}
		return f.Seek(off, whence)
	}, yield)
}

// seekFunc is lseek(off, SEEK_DATA) for data, lseek(off, SEEK_HOLE) otherwise.
type seekFunc func(off int64, data bool) (int64, error)

// walk is DataRegions over any seekFunc: the logic of every platform,
// testable without its file systems.
func walk(size int64, seek seekFunc, yield Yield) error {
	for off := int64(0); off < size; {
		data, err := seek(off, true)
		switch {
		case errors.Is(err, unix.ENXIO):
			return nil // only a hole remains
		case err != nil && noHoles(err):
			return yield(off, size)
		case err != nil:
			return fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		if data >= size {
			return nil
		}
		if data < off {
			return yield(off, size) // never go back on a confused file system
		}
		hole, err := seek(data, false)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
		}
		hole = min(hole, size)
		if hole <= data {
			return yield(data, size) // never loop on a confused file system
		}
		if err := yield(data, hole); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// noHoles reports whether err is a file system's way of saying it cannot
// find holes: EINVAL for an unknown whence (old kernels), EOPNOTSUPP,
// ENOTSUP (macOS's differs from EOPNOTSUPP; Linux's is the same) and ENOTTY
// (a macOS file system without the seek-hole ioctl lseek forwards to).
func noHoles(err error) bool {
	for _, e := range []error{unix.EINVAL, unix.EOPNOTSUPP, unix.ENOTSUP, unix.ENOTTY} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
