// Package kernel prepares a verified kernel image for direct boot. Cloud
// Hypervisor and Apple Virtualization.framework boot an arm64 kernel only as
// the uncompressed Image, but distributions ship it packed: Ubuntu's arm64
// vmlinuz is a gzip stream, and kernels built with CONFIG_EFI_ZBOOT (Fedora's
// arm64 vmlinuz today) are EFI applications that carry the Image compressed.
// Unpack turns either into the raw Image. The caller unpacks only after the
// digest check; the output is size-capped against decompression bombs.
package kernel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/ctxio"
)

// MaxUncompressedSize bounds the output: real kernels are tens of MiB, so
// anything past this is a decompression bomb, not a kernel.
const MaxUncompressedSize = 512 << 20

// Sentinel errors, wrapped by *Error.
var (
	// ErrTooLarge: decompression exceeded the size cap.
	ErrTooLarge = errors.New("uncompressed kernel exceeds the size cap")
	// ErrMalformed: the header or the compressed stream is broken.
	ErrMalformed = errors.New("malformed kernel image")
	// ErrUnsupportedCompression: a zboot kernel compressed with an algorithm
	// this package does not unpack.
	ErrUnsupportedCompression = errors.New("unsupported zboot compression")
	// ErrNotPacked: Unpack was given a kernel that boots as it is.
	ErrNotPacked = errors.New("kernel is not packed")
)

// Error is a kernel that cannot be unpacked because of what its bytes are;
// it wraps one of the sentinel errors. I/O failures and cancellation are
// returned as they are.
type Error struct {
	Path string
	Err  error
}

func (e *Error) Error() string { return "kernel " + e.Path + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Permanent reports that the error cannot pass with time: the same verified
// bytes fail the same way.
func (e *Error) Permanent() bool { return true }

// Packing says how a kernel file wraps the image a hypervisor boots.
type Packing int

const (
	// Plain boots as it is (an arm64 Image, an x86 bzImage, ...).
	Plain Packing = iota
	// Gzip is a gzip stream around the Image (Ubuntu's arm64 vmlinuz).
	Gzip
	// ZBoot is an EFI zboot application: a PE header and a small
	// decompressor around the compressed Image.
	ZBoot
)

func (p Packing) String() string {
	switch p {
	case Plain:
		return "plain"
	case Gzip:
		return "gzip"
	case ZBoot:
		return "EFI zboot"
	}
	return fmt.Sprintf("Packing(%d)", int(p))
}

// NeedsUnpacking reports whether Unpack must run before a direct boot.
func (p Packing) NeedsUnpacking() bool { return p == Gzip || p == ZBoot }

// The EFI zboot header (Linux drivers/firmware/efi/libstub/zboot-header.S):
// "MZ" at 0, "zimg" at 4, the payload's offset and size (u32 little endian)
// at 8 and 12, and the compression name, NUL-terminated, from 24 up to the
// PE magic at 0x38.
const (
	zbootMagicOff   = 4
	zbootPayloadOff = 8
	zbootSizeOff    = 12
	zbootCompOff    = 24
	zbootHeaderLen  = 0x38
)

// Detect reads the first bytes of the file at path and says how it is packed.
func Detect(path string) (Packing, error) {
	f, err := os.Open(path)
	if err != nil {
		return Plain, err
	}
	defer f.Close()
	var head [8]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return Plain, err
	}
	return DetectHead(head[:n]), nil
}

// DetectHead is Detect for the first bytes of a kernel file (8 suffice).
func DetectHead(head []byte) Packing {
	switch {
	case len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b:
		return Gzip
	case len(head) >= 8 && string(head[:2]) == "MZ" && string(head[zbootMagicOff:zbootMagicOff+4]) == "zimg":
		// A plain arm64 Image starts with "MZ" too (its EFI stub); "zimg" is
		// where its branch instruction would be.
		return ZBoot
	}
	return Plain
}

// Unpack writes the raw image inside the packed kernel src (Gzip or ZBoot)
// to dst, published atomically (temporary name, fsync, rename). At most
// maxSize bytes are accepted (0: MaxUncompressedSize). Errors about the
// bytes are *Error; nothing is left at dst on any error.
func Unpack(ctx context.Context, src, dst string, maxSize int64) error {
	if maxSize <= 0 {
		maxSize = MaxUncompressedSize
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", src, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("kernel %s: %w", src, err)
	}
	var head [zbootHeaderLen]byte
	n, err := in.ReadAt(head[:], 0)
	if n < len(head) && err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("kernel %s: %w", src, err)
	}
	var payload io.Reader
	var method string
	switch DetectHead(head[:n]) {
	case Gzip:
		payload, method = io.NewSectionReader(in, 0, st.Size()), "gzip"
	case ZBoot:
		off, size, comp, err := parseZBoot(head[:n], st.Size())
		if err != nil {
			return &Error{Path: src, Err: err}
		}
		payload, method = io.NewSectionReader(in, off, size), comp
	default:
		return &Error{Path: src, Err: ErrNotPacked}
	}
	dec, err := newDecoder(method, payload)
	if err != nil {
		return &Error{Path: src, Err: err}
	}
	defer dec.Close()
	return atomicfile.Write(dst, 0o444, func(f *os.File) error {
		n, err := io.Copy(f, io.LimitReader(ctxio.Reader(ctx, dec), maxSize+1))
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil && isDecodeError(err):
			return &Error{Path: src, Err: fmt.Errorf("%w: %s stream: %w", ErrMalformed, method, err)}
		case err != nil:
			return fmt.Errorf("kernel %s: %w", src, err)
		case n > maxSize:
			return &Error{Path: src, Err: fmt.Errorf("%w (%d bytes)", ErrTooLarge, maxSize)}
		}
		return nil
	})
}

// parseZBoot reads the zboot header and returns where the compressed image
// lies and how it is compressed. Every field is checked against the file
// size before it is used.
func parseZBoot(head []byte, fileSize int64) (off, size int64, comp string, err error) {
	if len(head) < zbootHeaderLen {
		return 0, 0, "", fmt.Errorf("%w: EFI zboot header cut short at %d bytes", ErrMalformed, len(head))
	}
	o := int64(binary.LittleEndian.Uint32(head[zbootPayloadOff:]))
	s := int64(binary.LittleEndian.Uint32(head[zbootSizeOff:]))
	name, _, found := bytes.Cut(head[zbootCompOff:zbootHeaderLen], []byte{0})
	switch {
	case !found:
		return 0, 0, "", fmt.Errorf("%w: EFI zboot compression name is not NUL-terminated", ErrMalformed)
	case s == 0:
		return 0, 0, "", fmt.Errorf("%w: EFI zboot payload is empty", ErrMalformed)
	case o < zbootHeaderLen || o > fileSize || s > fileSize-o:
		return 0, 0, "", fmt.Errorf("%w: EFI zboot payload of %d bytes at offset %d lies outside the %d-byte file", ErrMalformed, s, o, fileSize)
	}
	return o, s, string(name), nil
}

// decoder is a decompressing reader.
type decoder interface {
	io.Reader
	Close()
}

// maxZstdWindow is the largest zstd window accepted: what `zstd -22
// --ultra` (Kbuild's zstd22) declares. Decoding memory is bounded by it.
const maxZstdWindow = 128 << 20

// newDecoder opens method's decompressor on r. The zboot names are Kbuild's:
// gzip, and zstd (called zstd22 before Linux 6.14). Linux 6.14 dropped lzma,
// xzkern, lz4 and lzo from zboot, and no distribution ships them; xzkern
// would also need the BCJ filters that Go's xz readers lack.
func newDecoder(method string, r io.Reader) (decoder, error) {
	switch method {
	case "gzip":
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("%w: not a valid gzip stream: %w", ErrMalformed, err)
		}
		return gzipDecoder{zr}, nil
	case "zstd", "zstd22":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxZstdWindow))
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrMalformed, err)
		}
		return zr, nil
	}
	return nil, fmt.Errorf("%w %q (only gzip and zstd are unpacked)", ErrUnsupportedCompression, method)
}

type gzipDecoder struct{ *gzip.Reader }

func (d gzipDecoder) Close() { _ = d.Reader.Close() }

// isDecodeError tells a broken stream from a failing read of the file.
func isDecodeError(err error) bool {
	var pe *os.PathError
	return !errors.As(err, &pe)
}
