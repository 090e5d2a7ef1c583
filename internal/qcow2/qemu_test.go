package qcow2

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/testutil"
)

// requireQemu returns the paths of qemu-img and qemu-io or skips the test.
func requireQemu(t *testing.T) (qemuImg, qemuIO string) {
	t.Helper()
	var err error
	if qemuImg, err = exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (apt-get install qemu-utils); skipping live cross-check")
	}
	if qemuIO, err = exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed (apt-get install qemu-utils); skipping live cross-check")
	}
	return qemuImg, qemuIO
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// writeRandomRaw writes a raw disk of size bytes mixing random, text-like
// and zero regions, seeded so each subtest differs.
func writeRandomRaw(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, size)
	for off := int64(0); off < size; {
		n := min(int64(rng.IntN(300000)+1), size-off)
		switch rng.IntN(4) {
		case 0: // random
			for i := range buf[off : off+n] {
				buf[off+int64(i)] = byte(rng.Uint32())
			}
		case 1: // compressible text
			line := []byte(fmt.Sprintf("line %d of something compressible\n", rng.IntN(1000)))
			for i := int64(0); i < n; i++ {
				buf[off+i] = line[i%int64(len(line))]
			}
		default: // zeros
		}
		off += n
	}
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestQemuImgLive builds images with qemu-img/qemu-io at test time (larger
// and more varied than the committed corpus, including 2 MiB clusters) and
// checks that our output matches qemu-img convert byte for byte, is at most
// as allocated, and that Extents agrees with qemu-img map.
func TestQemuImgLive(t *testing.T) {
	qemuImg, qemuIO := requireQemu(t)
	tests := []struct {
		name     string
		create   []string // qemu-img convert/create options for the image
		compress bool
		size     int64
		io       []string // qemu-io commands afterwards
	}{
		{name: "c2m", create: []string{"-o", "cluster_size=2M"}, size: 9 << 20, io: []string{"write -P 0x5a 3000000 5000", "write -z 0 2M"}},
		{name: "c2m-zlib", create: []string{"-o", "cluster_size=2M"}, compress: true, size: 9<<20 + 512},
		{name: "c2m-zstd-extl2", create: []string{"-o", "cluster_size=2M,extended_l2=on,compression_type=zstd"}, compress: true, size: 8 << 20,
			io: []string{"write -P 0x11 4194304 65536", "write -z 4325376 65536"}},
		{name: "c64k-extl2", create: []string{"-o", "extended_l2=on"}, size: 6 << 20, io: []string{"write -z 100000 300000", "discard 1M 64k", "write -P 0x3 1000 1"}},
		{name: "c512-zstd", create: []string{"-o", "cluster_size=512,compression_type=zstd"}, compress: true, size: 3 << 20, io: []string{"write -P 0x44 1000000 4096"}},
		{name: "c4k-v2", create: []string{"-o", "cluster_size=4096,compat=0.10"}, size: 5<<20 + 1024},
		{name: "c64k-zlib-overwrite", create: nil, compress: true, size: 7 << 20, io: []string{"write -P 0x7 65000 1000", "write -z 2M 1M", "discard 4M 64k", "write -c -P 0x8 4M 64k"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			raw := filepath.Join(dir, "src.raw")
			img := filepath.Join(dir, "img.qcow2")
			writeRandomRaw(t, raw, tt.size, uint64(i)+1)
			args := []string{"convert", "-f", "raw", "-O", "qcow2"}
			if tt.compress {
				args = append(args, "-c")
			}
			args = append(args, tt.create...)
			run(t, qemuImg, append(args, raw, img)...)
			if len(tt.io) > 0 {
				var ioArgs []string
				for _, c := range tt.io {
					ioArgs = append(ioArgs, "-c", c)
				}
				run(t, qemuIO, append(ioArgs, img)...)
			}
			ref := filepath.Join(dir, "qemu.raw")
			run(t, qemuImg, "convert", "-f", "qcow2", "-O", "raw", img, ref)
			ours := filepath.Join(dir, "ours.raw")
			if _, err := ConvertToRaw(context.Background(), img, ours); err != nil {
				t.Fatal(err)
			}
			if got, want := testutil.FileSHA256(t, ours), testutil.FileSHA256(t, ref); got != want {
				t.Fatalf("sha256 %s, qemu-img %s", got, want)
			}
			if o, q := allocatedBytes(t, ours), allocatedBytes(t, ref); o > q {
				t.Errorf("output allocates %d bytes, qemu-img's %d", o, q)
			}
			compareMap(t, qemuImg, img)
		})
	}
}

type qemuMapEntry struct {
	Start, Length int64
	Present, Zero bool
	Data          bool
	Offset        *int64
}

// compareMap checks Extents against `qemu-img map` in 512-byte units.
func compareMap(t *testing.T, qemuImg, path string) {
	t.Helper()
	out, err := exec.Command(qemuImg, "map", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img map: %v", err)
	}
	var entries []qemuMapEntry
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatal(err)
	}
	var wantAllocated int64
	for _, e := range entries {
		if e.Data {
			wantAllocated += e.Length
		}
	}
	type unit struct {
		kind ExtentKind
		host int64
	}
	var want []unit
	for _, e := range entries {
		for off := int64(0); off < e.Length; off += 512 {
			u := unit{host: -1}
			switch {
			case e.Data && e.Offset != nil:
				u.kind, u.host = ExtentData, *e.Offset+off
			case e.Data:
				u.kind = ExtentCompressed
			case e.Present:
				u.kind = ExtentZero
			default:
				u.kind = ExtentUnallocated
			}
			want = append(want, u)
		}
	}
	img, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var got []unit
	for e, err := range img.Extents() {
		if err != nil {
			t.Fatal(err)
		}
		if e.Offset != int64(len(got))*512 {
			t.Fatalf("extent %+v does not start where the previous ended (%d)", e, len(got)*512)
		}
		for off := int64(0); off < e.Length; off += 512 {
			u := unit{kind: e.Kind, host: -1}
			if e.Kind == ExtentData {
				u.host = e.HostOffset + off
			}
			got = append(got, u)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("extents cover %d units, qemu-img map %d", len(got), len(want))
	}
	if n, err := img.AllocatedBytes(context.Background()); err != nil || n != wantAllocated {
		t.Errorf("AllocatedBytes = %d, %v; qemu-img map has %d bytes of data", n, err, wantAllocated)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("at guest offset %#x: got %v@%#x, qemu-img map says %v@%#x", i*512, got[i].kind, got[i].host, want[i].kind, want[i].host)
		}
	}
}

func TestExtentsMatchQemuMap(t *testing.T) {
	qemuImg, _ := requireQemu(t)
	for _, tc := range loadExpected(t) {
		t.Run(tc.name, func(t *testing.T) {
			compareMap(t, qemuImg, filepath.Join(corpusDir, "valid", tc.name))
		})
	}
}

// TestInfoMatchesQemuImg compares Info with `qemu-img info --output=json`.
func TestInfoMatchesQemuImg(t *testing.T) {
	qemuImg, _ := requireQemu(t)
	for _, tc := range loadExpected(t) {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(corpusDir, "valid", tc.name)
			out, err := exec.Command(qemuImg, "info", "--output=json", path).Output()
			if err != nil {
				t.Fatalf("qemu-img info: %v", err)
			}
			var q struct {
				VirtualSize int64 `json:"virtual-size"`
				ClusterSize int64 `json:"cluster-size"`
				Dirty       bool  `json:"dirty-flag"`
				Snapshots   []struct {
					Name string
				}
				Specific struct {
					Data struct {
						Compat      string
						Compression string `json:"compression-type"`
						Lazy        bool   `json:"lazy-refcounts"`
						RefBits     int    `json:"refcount-bits"`
						ExtendedL2  bool   `json:"extended-l2"`
					}
				} `json:"format-specific"`
			}
			if err := json.Unmarshal(out, &q); err != nil {
				t.Fatal(err)
			}
			img, err := OpenFile(path)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			info := img.Info()
			compat := map[int]string{2: "0.10", 3: "1.1"}[info.Version]
			d := q.Specific.Data
			// qemu-img omits compression-type for version 2; it is always zlib there.
			if d.Compression == "" {
				d.Compression = "zlib"
			}
			got := fmt.Sprint(info.VirtualSize, info.ClusterSize, info.Dirty, info.Snapshots, compat, info.Compression, info.LazyRefcounts, info.RefcountBits, info.ExtendedL2)
			want := fmt.Sprint(q.VirtualSize, q.ClusterSize, q.Dirty, len(q.Snapshots), d.Compat, d.Compression, d.Lazy, d.RefBits, d.ExtendedL2)
			if got != want {
				t.Fatalf("Info %s, qemu-img info %s", got, want)
			}
		})
	}
}

// TestQemuImgOddVirtualSize: a header whose virtual size is not a multiple
// of 512 (qemu-img create rounds up, other tools need not). QEMU counts whole
// sectors and drops the partial last one; our Info, output and extents must
// say the same as qemu-img info, convert and map.
func TestQemuImgOddVirtualSize(t *testing.T) {
	qemuImg, qemuIO := requireQemu(t)
	tests := []struct {
		name    string
		cluster int64
		size    int64
	}{
		{"1000001", 65536, 1000001},
		{"one short of a sector", 65536, 3*65536 + 511},
		{"one past an L2 table", 512, 512*64 + 1},
		{"less than a sector", 65536, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "odd.qcow2")
			rounded := (tt.size + 511) &^ 511
			run(t, qemuImg, "create", "-q", "-f", "qcow2", "-o", fmt.Sprintf("cluster_size=%d", tt.cluster), img, fmt.Sprint(rounded))
			// Data in the last whole sector and in the partial one that is dropped.
			run(t, qemuIO, "-c", fmt.Sprintf("write -P 0x5a %d 512", rounded-512), img)
			if rounded >= 1024 {
				run(t, qemuIO, "-c", fmt.Sprintf("write -P 0x33 %d 512", rounded-1024), img)
			}
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			be.PutUint64(b[24:], uint64(tt.size)) // the header's size field
			if err := os.WriteFile(img, b, 0o644); err != nil {
				t.Fatal(err)
			}

			out, err := exec.Command(qemuImg, "info", "--output=json", img).Output()
			if err != nil {
				t.Fatalf("qemu-img info: %v", err)
			}
			var q struct {
				VirtualSize int64 `json:"virtual-size"`
			}
			if err := json.Unmarshal(out, &q); err != nil {
				t.Fatal(err)
			}
			im, err := OpenFile(img)
			if err != nil {
				t.Fatal(err)
			}
			got := im.Info().VirtualSize
			im.Close()
			if got != q.VirtualSize {
				t.Errorf("virtual size %d, qemu-img info %d", got, q.VirtualSize)
			}

			ref := filepath.Join(dir, "qemu.raw")
			run(t, qemuImg, "convert", "-f", "qcow2", "-O", "raw", img, ref)
			ours := filepath.Join(dir, "ours.raw")
			stats, err := ConvertToRaw(context.Background(), img, ours)
			if err != nil {
				t.Fatal(err)
			}
			rs, os1 := fileSize(t, ref), fileSize(t, ours)
			if rs != os1 || stats.VirtualSize != rs {
				t.Errorf("output %d bytes (stats %d), qemu-img's %d", os1, stats.VirtualSize, rs)
			}
			if got, want := testutil.FileSHA256(t, ours), testutil.FileSHA256(t, ref); got != want {
				t.Errorf("sha256 %s, qemu-img %s", got, want)
			}
			compareMap(t, qemuImg, img)
		})
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
