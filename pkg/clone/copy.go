package clone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/vmprep/vmprep/internal/sparsefile"
)

// copyChunk bounds each copy call, so that cancellation and progress are
// checked often.
const copyChunk = 8 << 20

// sparseCopy copies src's data regions to dst (empty, same offsets), found
// with SEEK_DATA/SEEK_HOLE where the platform has them (internal/sparsefile),
// leaves zero blocks unwritten, and sets dst's size: holes stay holes.
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
	err = sparsefile.DataRegions(src, size, func(start, end int64) error {
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
