package qcow2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/vmprep/vmprep/internal/testutil"
)

// TestZstdMultiFrame rewrites a compressed cluster as two zstd frames
// followed by garbage, appended at EOF, and checks it reads back unchanged.
func TestZstdMultiFrame(t *testing.T) {
	b := corpusBytes(t, "zstd.qcow2")
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, img.Size())
	if _, err := img.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	cs := img.ClusterSize()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		trailer []byte
	}{
		{"no trailer", nil},
		{"garbage trailer", bytes.Repeat([]byte{0xde, 0xad}, 300)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames := enc.EncodeAll(want[:cs/3], nil)
			frames = enc.EncodeAll(want[cs/3:cs], frames)
			frames = append(frames, tt.trailer...)
			host := uint64(len(b)) + 100 // deliberately not sector-aligned
			mod := append(bytes.Clone(b), make([]byte, 100)...)
			mod = append(mod, frames...)
			// Sector count covers the frames; the descriptor's tail runs past EOF.
			sectors := (uint64(len(frames))+host&511+511)/512 - 1
			putU64(mod, l2Off(mod), flagCompressed|sectors<<54|host)
			img2, err := Open(bytes.NewReader(mod), int64(len(mod)))
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, img2.Size())
			if _, err := img2.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("guest data differs after rewriting the cluster as two frames")
			}
		})
	}
}

func writeTemp(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConvertFailureLeavesNothing: an error found mid-conversion (a data
// cluster past EOF in the last L2 entry) leaves an existing destination
// untouched and no temporary file behind.
func TestConvertFailureLeavesNothing(t *testing.T) {
	tests := []struct {
		name   string
		base   string
		mutate func([]byte) []byte
	}{
		{"data past EOF at the end", "v3-c4096.qcow2", func(b []byte) []byte {
			last := l2Off(b) + 8*(512*1024/4096-1)
			putU64(b, last, 1<<40|flagCopied)
			return b
		}},
		{"garbage compressed cluster", "zlib-c4k.qcow2", func(b []byte) []byte {
			// Break the last compressed cluster so the error comes late.
			for i := uint64(512*1024/4096) - 1; ; i-- {
				if e := be.Uint64(b[l2Off(b)+8*i:]); e&flagCompressed != 0 {
					host := e & (uint64(1)<<(62-4) - 1)
					copy(b[host:], bytes.Repeat([]byte{0xff}, 64))
					return b
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src := writeTemp(t, dir, "src.qcow2", tt.mutate(corpusBytes(t, tt.base)))
			dst := writeTemp(t, dir, "dst.raw", []byte("previous"))
			_, err := ConvertToRaw(context.Background(), src, dst, WithConcurrency(4))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v, want ErrMalformed", err)
			}
			if got, _ := os.ReadFile(dst); string(got) != "previous" {
				t.Fatalf("destination changed to %q", got)
			}
			assertOnly(t, dir, "dst.raw", "src.qcow2")
		})
	}
}

func TestConvertCancel(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeRandomRaw(t, src, 24<<20, 7)
	tests := []struct {
		name string
		run  func(dst string) error
	}{
		{"cancelled before start", func(dst string) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := ConvertToRaw(ctx, src, dst)
			return err
		}},
		{"cancelled from progress", func(dst string) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := ConvertToRaw(ctx, src, dst, WithConcurrency(2), WithProgress(func(done, total int64) {
				if done > 0 && done < total {
					cancel()
				}
			}))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := t.TempDir()
			if err := tt.run(filepath.Join(out, "dst.raw")); !errors.Is(err, context.Canceled) {
				t.Fatalf("error %v, want context.Canceled", err)
			}
			assertOnly(t, out)
		})
	}
}

// TestConvertRaw: raw input is copied byte for byte, holes where zero.
func TestConvertRaw(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	writeRandomRaw(t, src, 10<<20+1234, 3)
	tests := []struct {
		name    string
		workers int
	}{{"one worker", 1}, {"eight workers", 8}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst.raw")
			stats, err := ConvertToRaw(context.Background(), src, dst, WithConcurrency(tt.workers))
			if err != nil {
				t.Fatal(err)
			}
			if stats.SourceFormat != FormatRaw {
				t.Errorf("source format %q, want raw", stats.SourceFormat)
			}
			if testutil.FileSHA256(t, dst) != testutil.FileSHA256(t, src) {
				t.Fatal("raw copy differs from source")
			}
			if a, s := allocatedBytes(t, dst), allocatedBytes(t, src); a >= s {
				t.Errorf("copy allocates %d bytes, not fewer than the dense source's %d", a, s)
			}
			if stats.DataBytes >= stats.VirtualSize {
				t.Errorf("wrote %d of %d bytes: zero blocks were not skipped", stats.DataBytes, stats.VirtualSize)
			}
		})
	}
}

// TestReadAtBounds checks io.ReaderAt semantics at and past the end.
func TestReadAtBounds(t *testing.T) {
	img, err := OpenFile(filepath.Join(corpusDir, "valid", "odd-size.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	size := img.Size()
	tests := []struct {
		name    string
		off     int64
		len     int
		wantN   int
		wantErr error
	}{
		{"inside", 0, 100, 100, nil},
		{"across end", size - 10, 100, 10, io.EOF},
		{"at end", size, 1, 0, io.EOF},
		{"empty at end", size, 0, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := img.ReadAt(make([]byte, tt.len), tt.off)
			if n != tt.wantN || !errors.Is(err, tt.wantErr) && err != tt.wantErr {
				t.Fatalf("ReadAt = %d, %v; want %d, %v", n, err, tt.wantN, tt.wantErr)
			}
		})
	}
	if _, err := img.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("negative offset accepted")
	}
}

// TestMaxWorkers: the cap is the most workers whose buffers fit the budget
// beside the spare chunk buffers.
func TestMaxWorkers(t *testing.T) {
	tests := []struct {
		name        string
		clusterBits uint
		raw         bool
	}{
		{"raw", 0, true},
		{"512 B clusters", 9, false},
		{"64 KiB clusters", 16, false},
		{"2 MiB clusters", 21, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var img *Image
			per, buf := int64(defaultChunk), int64(defaultChunk)
			if !tt.raw {
				img = &Image{clusterBits: tt.clusterBits, clusterSize: 1 << tt.clusterBits}
				buf = max(buf, img.clusterSize)
				per = buf + 3*img.clusterSize
			}
			spare := spareBuffers * buf
			got := int64(maxWorkers(img, defaultChunk))
			if got < 1 || spare+got*per > workerBudget || spare+(got+1)*per <= workerBudget {
				t.Fatalf("maxWorkers = %d with %d bytes each and %d spare: not the most that fit %d", got, per, spare, workerBudget)
			}
		})
	}
}

// TestConvertDeclaredFormat: WithSourceFormat works like qemu-img's -f. A
// qcow2 whose magic is broken is refused when qcow2 is declared (detection
// alone would copy it as raw); declaring raw copies any file as it is.
func TestConvertDeclaredFormat(t *testing.T) {
	good := corpusBytes(t, "v3-c4096.qcow2")
	broken := bytes.Clone(good)
	copy(broken, "QFI\x00") // one byte of the magic lost
	tests := []struct {
		name       string
		src        []byte
		declared   Format
		wantErr    error  // nil: success
		wantCopy   bool   // the output is the source's bytes
		wantSource Format // stats.SourceFormat on success
	}{
		{"broken magic declared qcow2 is refused", broken, FormatQcow2, ErrNotQcow2, false, ""},
		{"broken magic detected is copied as raw", broken, "", nil, true, FormatRaw},
		{"qcow2 declared qcow2 converts", good, FormatQcow2, nil, false, FormatQcow2},
		{"qcow2 declared raw is copied", good, FormatRaw, nil, true, FormatRaw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src := writeTemp(t, dir, "src", tt.src)
			dst := filepath.Join(dir, "dst.raw")
			var opts []ConvertOption
			if tt.declared != "" {
				opts = append(opts, WithSourceFormat(tt.declared))
			}
			stats, err := ConvertToRaw(context.Background(), src, dst, opts...)
			if tt.wantErr != nil {
				var fe *FormatError
				if !errors.Is(err, tt.wantErr) || !errors.As(err, &fe) || !strings.Contains(err.Error(), "no qcow2 magic") {
					t.Fatalf("error %v, want a FormatError saying the magic is missing", err)
				}
				assertOnly(t, dir, "src")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if stats.SourceFormat != tt.wantSource {
				t.Errorf("source format %q, want %q", stats.SourceFormat, tt.wantSource)
			}
			if same := testutil.FileSHA256(t, dst) == testutil.FileSHA256(t, src); same != tt.wantCopy {
				t.Errorf("output identical to the source: %v, want %v", same, tt.wantCopy)
			}
		})
	}
}
