package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/vmprep/vmprep/internal/kerneltest"
)

func gzipBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// zstdBytes compresses with the zstd tool when it is installed, declaring
// the 128 MiB window that Kbuild's `zstd -22 --ultra` on a pipe declares
// (level 3 with --long=27 does that quickly); otherwise with the Go encoder.
func zstdBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	if zstdCmd, err := exec.LookPath("zstd"); err == nil {
		cmd := exec.Command(zstdCmd, "-3", "--long=27", "-q", "-c")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("zstd: %v", err)
		}
		return out
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(data, nil)
}

func TestDetect(t *testing.T) {
	image := kerneltest.Arm64Image(64 << 10)
	tests := []struct {
		name string
		data []byte
		want Packing
	}{
		{"gzip Image (Ubuntu arm64)", gzipBytes(t, image), Gzip},
		{"EFI zboot, gzip (Fedora arm64)", kerneltest.ZBoot("gzip", gzipBytes(t, image), len(image)), ZBoot},
		{"EFI zboot, zstd", kerneltest.ZBoot("zstd22", zstdBytes(t, image), len(image)), ZBoot},
		{"plain arm64 Image: MZ without zimg", image, Plain},
		{"empty", nil, Plain},
		{"two bytes of MZ", []byte("MZ"), Plain},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vmlinuz")
			if err := os.WriteFile(path, tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := Detect(path)
			if err != nil || got != tt.want {
				t.Fatalf("Detect = %v, %v; want %v", got, err, tt.want)
			}
			if got.NeedsUnpacking() != (tt.want != Plain) {
				t.Errorf("%v.NeedsUnpacking() = %v", got, got.NeedsUnpacking())
			}
		})
	}
}

func TestUnpack(t *testing.T) {
	image := kerneltest.Arm64Image(3 << 20)
	gz, zs := gzipBytes(t, image), zstdBytes(t, image)
	zbGzip := kerneltest.ZBoot("gzip", gz, len(image))
	zbZstd := kerneltest.ZBoot("zstd", zs, len(image))
	// mutate returns a copy of b changed by f.
	mutate := func(b []byte, f func(b []byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	le := binary.LittleEndian
	tests := []struct {
		name     string
		src      []byte
		max      int64
		wantErr  error  // nil: success
		wantText string // in the error message
	}{
		{name: "gzip Image", src: gz},
		{name: "zboot gzip", src: zbGzip},
		{name: "zboot zstd", src: zbZstd},
		{name: "zboot zstd22 (before Linux 6.14)", src: kerneltest.ZBoot("zstd22", zs, len(image))},

		{name: "gzip bomb over the cap", src: gz, max: 1 << 20, wantErr: ErrTooLarge},
		{name: "zboot gzip bomb over the cap", src: zbGzip, max: 1 << 20, wantErr: ErrTooLarge},
		{name: "zboot zstd bomb over the cap", src: zbZstd, max: 1 << 20, wantErr: ErrTooLarge},
		{name: "lzma is refused by name", src: kerneltest.ZBoot("lzma", gz, len(image)), wantErr: ErrUnsupportedCompression, wantText: `"lzma"`},
		{name: "xzkern is refused by name", src: kerneltest.ZBoot("xzkern", gz, len(image)), wantErr: ErrUnsupportedCompression, wantText: `"xzkern"`},
		{name: "unprintable name is quoted", src: kerneltest.ZBoot("\xff\x01", gz, len(image)), wantErr: ErrUnsupportedCompression, wantText: `"\xff\x01"`},
		{name: "name without NUL", src: mutate(zbGzip, func(b []byte) { copy(b[24:0x38], bytes.Repeat([]byte("z"), 32)) }), wantErr: ErrMalformed, wantText: "NUL"},
		{name: "payload past the end", src: mutate(zbGzip, func(b []byte) { le.PutUint32(b[12:], uint32(len(b))) }), wantErr: ErrMalformed, wantText: "outside"},
		{name: "offset and size overflow", src: mutate(zbGzip, func(b []byte) { le.PutUint32(b[8:], 0xffffffff); le.PutUint32(b[12:], 0xffffffff) }), wantErr: ErrMalformed, wantText: "outside"},
		{name: "payload inside the header", src: mutate(zbGzip, func(b []byte) { le.PutUint32(b[8:], 4) }), wantErr: ErrMalformed, wantText: "outside"},
		{name: "empty payload", src: mutate(zbGzip, func(b []byte) { le.PutUint32(b[12:], 0) }), wantErr: ErrMalformed, wantText: "empty"},
		{name: "header cut short", src: zbGzip[:40], wantErr: ErrMalformed, wantText: "cut short"},
		{name: "zboot zstd stream cut short", src: mutate(zbZstd, func(b []byte) { le.PutUint32(b[12:], uint32(len(zs)/2)) }), wantErr: ErrMalformed},
		{name: "zboot payload is not gzip", src: kerneltest.ZBoot("gzip", zs, len(image)), wantErr: ErrMalformed},
		{name: "zboot payload is not zstd", src: kerneltest.ZBoot("zstd", gz, len(image)), wantErr: ErrMalformed},
		{name: "truncated gzip", src: gz[:len(gz)/2], wantErr: ErrMalformed},
		{name: "plain Image has nothing to unpack", src: image, wantErr: ErrNotPacked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "vmlinux")
			if err := os.WriteFile(src, tt.src, 0o644); err != nil {
				t.Fatal(err)
			}
			err := Unpack(context.Background(), src, dst, tt.max)
			if tt.wantErr != nil {
				var ke *Error
				if !errors.Is(err, tt.wantErr) || !errors.As(err, &ke) || !ke.Permanent() {
					t.Fatalf("Unpack error = %v, want a permanent *Error wrapping %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantText) || !strings.Contains(err.Error(), src) {
					t.Errorf("error %q does not name %s and say %q", err, src, tt.wantText)
				}
				if ents, _ := os.ReadDir(dir); len(ents) != 1 {
					t.Errorf("left files behind: %v", ents)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, image) {
				t.Fatalf("unpacked %d bytes that differ from the %d-byte Image", len(got), len(image))
			}
			if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o444 {
				t.Errorf("output mode %v (%v), want read-only", fi.Mode(), err)
			}
		})
	}
}

func TestUnpackCancelled(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(src, kerneltest.ZBoot("gzip", gzipBytes(t, kerneltest.Arm64Image(1<<20)), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Unpack(ctx, src, filepath.Join(dir, "vmlinux"), 0)
	var ke *Error
	if !errors.Is(err, context.Canceled) || errors.As(err, &ke) {
		t.Fatalf("error %v, want context.Canceled and not a permanent *Error", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left files behind: %v", ents)
	}
}
