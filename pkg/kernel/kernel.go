// Package kernel prepares a verified kernel image for direct boot. Ubuntu's
// arm64 vmlinuz is a gzip-compressed Image, which Cloud Hypervisor and Apple
// Virtualization.framework cannot boot; they need it uncompressed. The caller
// decompresses only after the digest check.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/gzip"
	"github.com/vmprep/vmprep/pkg/store"
)

// MaxUncompressedSize bounds the output: real kernels are tens of MiB, so
// anything past this is a decompression bomb, not a kernel.
const MaxUncompressedSize = 512 << 20

// ErrTooLarge is returned when decompression exceeds the size cap.
var ErrTooLarge = errors.New("uncompressed kernel exceeds the size cap")

// IsGzip reports whether the file at path starts with the gzip magic (1f 8b).
func IsGzip(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var magic [2]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil
		}
		return false, err
	}
	return magic[0] == 0x1f && magic[1] == 0x8b, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Gunzip decompresses the gzip file src into dst, published atomically (temp
// name, fsync, rename). At most maxSize bytes are accepted (0: MaxUncompressedSize).
func Gunzip(ctx context.Context, src, dst string, maxSize int64) error {
	if maxSize <= 0 {
		maxSize = MaxUncompressedSize
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", src, err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		return fmt.Errorf("kernel %s: not a valid gzip stream: %w", src, err)
	}
	defer zr.Close()
	return store.WriteAtomic(dst, 0o444, func(f *os.File) error {
		n, err := io.Copy(f, io.LimitReader(ctxReader{ctx, zr}, maxSize+1))
		if err != nil {
			return fmt.Errorf("kernel %s: decompress: %w", src, err)
		}
		if n > maxSize {
			return fmt.Errorf("kernel %s: %w (%d bytes)", src, ErrTooLarge, maxSize)
		}
		return nil
	})
}
