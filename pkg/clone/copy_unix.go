//go:build unix

package clone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyChunk bounds each copy call, so that cancellation and progress are
// checked often.
const copyChunk = 8 << 20

// sparseCopy copies src's data regions to dst (empty, same offsets), found
// with SEEK_DATA/SEEK_HOLE (whose values differ between Linux and macOS:
// unix has each platform's), and sets dst's size: holes stay holes.
func sparseCopy(ctx context.Context, dst, src *os.File, progress func(done, total int64)) error {
	return sparseCopyWith(ctx, dst, src, progress, true)
}

// sparseCopyWith is sparseCopy; kernel=false reads and writes as on
// platforms without copy_file_range (so that path is tested on Linux too).
func sparseCopyWith(ctx context.Context, dst, src *os.File, progress func(done, total int64), kernel bool) error {
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	// The first region decides for the whole copy whether the kernel
	// copies (copy_file_range) or we read and write.
	buf := []byte(nil)
	var done int64
	err = dataRegions(src, size, func(start, end int64) error {
		for off := start; off < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(end-off, copyChunk)
			var err error
			if kernel {
				var ok bool
				ok, err = copyKernel(dst, src, off, n)
				if !ok {
					kernel = false
					continue
				}
			} else {
				if buf == nil {
					buf = make([]byte, copyChunk)
				}
				err = copyRW(dst, src, off, buf[:n])
			}
			if err != nil {
				return fmt.Errorf("copy at offset %d: %w", off, err)
			}
			off += n
			done += n
			if progress != nil {
				progress(done, size)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("set size %d: %w", size, err)
	}
	return nil
}

// dataRegions calls yield for each [start, end) of f that may hold data;
// where the file system cannot tell holes, the whole file is one region.
func dataRegions(f *os.File, size int64, yield func(start, end int64) error) error {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			return nil // only a hole remains
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP):
			return yield(off, size)
		case err != nil:
			return fmt.Errorf("SEEK_DATA: %w", err)
		}
		if data >= size {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE: %w", err)
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

// copyRW copies len(buf) bytes at off from src to dst by reading and
// writing, leaving all-zero blocks unwritten (holes), as cp --sparse=always.
func copyRW(dst, src *os.File, off int64, buf []byte) error {
	n, err := src.ReadAt(buf, off)
	if n < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = errShort // the base shrank under us
		}
		return err
	}
	const block = 4096
	for i := 0; i < n; {
		j := min(i+block, n)
		if !allZero(buf[i:j]) {
			// Coalesce consecutive data blocks into one write.
			k := j
			for k < n && !allZero(buf[k:min(k+block, n)]) {
				k = min(k+block, n)
			}
			if _, err := dst.WriteAt(buf[i:k], off+int64(i)); err != nil {
				return err
			}
			j = k
		}
		i = j
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
