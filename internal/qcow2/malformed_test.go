package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var be = binary.BigEndian

// corpusBytes returns a private copy of a valid corpus image.
func corpusBytes(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(corpusDir, "valid", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func l1Off(b []byte) uint64                 { return be.Uint64(b[40:]) }
func l2Off(b []byte) uint64                 { return be.Uint64(b[l1Off(b):]) & offsetMask }
func rtOff(b []byte) uint64                 { return be.Uint64(b[48:]) }
func putU64(b []byte, off, v uint64)        { be.PutUint64(b[off:], v) }
func putU32(b []byte, off uint64, v uint32) { be.PutUint32(b[off:], v) }

// openAndReadAll opens the image and reads every guest byte, returning the
// first error.
func openAndReadAll(b []byte) error {
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, io.NewSectionReader(img, 0, img.Size()))
	return err
}

func TestMalformed(t *testing.T) {
	tests := []struct {
		name    string
		base    string
		mutate  func(b []byte) []byte
		want    error
		mention string
	}{
		{"truncated header", "v3-data.qcow2", func(b []byte) []byte { return b[:60] }, ErrMalformed, "shorter than"},
		{"truncated v3 header", "v3-data.qcow2", func(b []byte) []byte { return b[:100] }, ErrMalformed, "version 3 header"},
		{"truncated body", "v3-data.qcow2", func(b []byte) []byte { return b[:len(b)/2] }, ErrMalformed, "past end of file"},
		{"version 4", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 4, 4); return b }, ErrMalformed, "version 4"},
		{"cluster_bits 8", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 20, 8); return b }, ErrMalformed, "cluster_bits 8"},
		{"cluster_bits 22", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 20, 22); return b }, ErrMalformed, "cluster_bits 22"},
		{"cluster_bits huge", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 20, 0xffffffff); return b }, ErrMalformed, "cluster_bits"},
		{"header_length short", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 100, 96); return b }, ErrMalformed, "header_length"},
		{"header_length odd", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 100, 105); return b }, ErrMalformed, "header_length"},
		{"header_length beyond cluster", "v3-c512.qcow2", func(b []byte) []byte { putU32(b, 100, 1024); return b }, ErrMalformed, "header_length"},
		{"refcount_order 7", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 96, 7); return b }, ErrMalformed, "refcount_order"},
		{"crypt_method 3", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 32, 3); return b }, ErrMalformed, "crypt_method"},
		{"backing name too long", "v3-data.qcow2", func(b []byte) []byte { putU64(b, 8, 512); putU32(b, 16, 2000); return b }, ErrMalformed, "backing_file_size"},
		{"extension outside cluster 0", "v3-c512.qcow2", func(b []byte) []byte {
			hl := uint64(be.Uint32(b[100:]))
			putU32(b, hl, 0x12345678)
			putU32(b, hl+4, 4096)
			return b
		}, ErrMalformed, "outside cluster 0"},
		{"compression type without bit", "v3-data.qcow2", func(b []byte) []byte { b[104] = 1; return b }, ErrMalformed, "compression_type 1"},
		{"compression type 2", "zstd.qcow2", func(b []byte) []byte { b[104] = 2; return b }, ErrUnknownFeature, "compression type 2"},
		{"extended L2 with small clusters", "v3-c4096.qcow2", func(b []byte) []byte { b[79] |= 0x10; return b }, ErrMalformed, "extended L2 needs cluster_bits"},
		{"absurd l1_size", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 36, 0xffffffff); return b }, ErrMalformed, "exceeds"},
		{"l1_size too small", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 36, 0); return b }, ErrMalformed, "too small"},
		{"virtual size absurd", "v3-data.qcow2", func(b []byte) []byte { putU64(b, 24, 1<<63); return b }, ErrMalformed, "absurd"},
		{"L1 past EOF", "v3-data.qcow2", func(b []byte) []byte { putU64(b, 40, 1<<40); return b }, ErrMalformed, "past end of file"},
		{"L1 unaligned", "v3-data.qcow2", func(b []byte) []byte { putU64(b, 40, l1Off(b)+8); return b }, ErrMalformed, "not cluster-aligned"},
		{"L1 in header cluster", "v3-data.qcow2", func(b []byte) []byte { putU64(b, 40, 0); return b }, ErrMalformed, "L1 table"},
		{"L1 overlaps refcount table", "v3-data.qcow2", func(b []byte) []byte { putU64(b, 40, rtOff(b)); return b }, ErrMalformed, "overlaps"},
		{"L1 reserved bits", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l1Off(b), l2Off(b)|1<<60); return b }, ErrMalformed, "reserved bits"},
		{"L1 COPIED without offset", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l1Off(b), flagCopied); return b }, ErrMalformed, "COPIED"},
		{"L2 offset unaligned", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l1Off(b), (l2Off(b)+512)|flagCopied); return b }, ErrMalformed, "not cluster-aligned"},
		{"L2 offset past EOF", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l1Off(b), 1<<40|flagCopied); return b }, ErrMalformed, "past end of file"},
		{"L2 table is the L1 table", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l1Off(b), l1Off(b)|flagCopied); return b }, ErrMalformed, "overlaps"},
		{"L2 table is the header", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l1Off(b), 0|flagCopied); return b }, ErrMalformed, "COPIED"},
		{"data cluster in header", "v3-c512.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), 0|flagCopied); return b }, ErrMalformed, "COPIED"},
		{"data cluster is the L1 table", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), l1Off(b)|flagCopied); return b }, ErrMalformed, "overlaps L1 table"},
		{"data cluster is its own L2 table", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), l2Off(b)|flagCopied); return b }, ErrMalformed, "overlaps L2 table"},
		{"data cluster is the refcount table", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), rtOff(b)|flagCopied); return b }, ErrMalformed, "overlaps refcount table"},
		{"data cluster unaligned", "v3-data.qcow2", func(b []byte) []byte {
			putU64(b, l2Off(b), (be.Uint64(b[l2Off(b):])&offsetMask+512)|flagCopied)
			return b
		}, ErrMalformed, "not cluster-aligned"},
		{"data cluster past EOF", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), 1<<40|flagCopied); return b }, ErrMalformed, "past end of file"},
		{"L2 reserved bits", "v3-data.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), be.Uint64(b[l2Off(b):])|0x100); return b }, ErrMalformed, "reserved bits"},
		{"zero flag in v2", "v2-data.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), be.Uint64(b[l2Off(b):])|1); return b }, ErrMalformed, "zero flag in a version 2"},
		{"compressed with COPIED", "zlib.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), be.Uint64(b[l2Off(b):])|flagCopied); return b }, ErrMalformed, "COPIED"},
		{"compressed past EOF", "zlib.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), flagCompressed|uint64(len(b)+4096)); return b }, ErrMalformed, "outside the file's data area"},
		{"compressed in header", "zlib.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), flagCompressed|200); return b }, ErrMalformed, "outside the file's data area"},
		{"oversized compressed descriptor over metadata", "zlib.qcow2", func(b []byte) []byte {
			// Maximal sector count starting in the refcount table: 2 clusters of "data".
			putU64(b, l2Off(b), flagCompressed|uint64(0xff)<<54|rtOff(b))
			return b
		}, ErrMalformed, "overlaps refcount table"},
		{"compressed garbage", "zlib.qcow2", func(b []byte) []byte {
			e := be.Uint64(b[l2Off(b):])
			host := e & (uint64(1)<<54 - 1)
			for i := range uint64(512) {
				b[host+i] = 0xff
			}
			return b
		}, ErrMalformed, "compressed cluster"},
		{"compressed too short", "zstd.qcow2", func(b []byte) []byte {
			e := be.Uint64(b[l2Off(b):])
			putU64(b, l2Off(b), e&(flagCompressed|(uint64(1)<<54-1))) // one sector only
			return b
		}, ErrMalformed, "compressed cluster"},
		{"subcluster allocated and zero", "extl2.qcow2", func(b []byte) []byte { putU64(b, l2Off(b)+8, 1|1<<32); return b }, ErrMalformed, "both allocated and zero"},
		{"subclusters without offset", "extl2.qcow2", func(b []byte) []byte { putU64(b, l2Off(b), 0); putU64(b, l2Off(b)+8, 1); return b }, ErrMalformed, "without a host offset"},
		{"compressed with bitmap", "extl2-zstd.qcow2", func(b []byte) []byte { putU64(b, l2Off(b)+8, 1); return b }, ErrMalformed, "subcluster bitmap"},
		{"too many snapshots", "snapshots.qcow2", func(b []byte) []byte { putU32(b, 60, 70000); return b }, ErrMalformed, "nb_snapshots"},
		{"snapshot table past EOF", "snapshots.qcow2", func(b []byte) []byte { putU64(b, 64, 1<<40); return b }, ErrMalformed, "snapshot table"},
		{"refcount table too big", "v3-data.qcow2", func(b []byte) []byte { putU32(b, 56, 1<<20); return b }, ErrMalformed, "refcount table"},
		{"refcount table past EOF", "v3-data.qcow2", func(b []byte) []byte { putU64(b, 48, 1<<40); return b }, ErrMalformed, "refcount table"},
		{"raw external data without file", "v3-data.qcow2", func(b []byte) []byte { b[95] |= 2; return b }, ErrMalformed, "autoclear"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := corpusBytes(t, tt.base)
			if err := openAndReadAll(orig); err != nil {
				t.Fatalf("unmutated %s: %v", tt.base, err)
			}
			b := tt.mutate(bytes.Clone(orig))
			err := openAndReadAll(b)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}
