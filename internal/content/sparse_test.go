package content

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vmprep/vmprep/internal/sparsefile"
	"github.com/vmprep/vmprep/internal/testutil"
)

func mustSparse(t *testing.T, s *Store, path string) string {
	t.Helper()
	h, _, err := s.sparseHash(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// writeLayout writes the logical content "size bytes, zero except chunks"
// with a given physical layout.
func writeLayout(t *testing.T, path string, size int64, chunks map[int64][]byte, dense bool) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if dense {
		buf := make([]byte, size)
		for off, c := range chunks {
			copy(buf[off:], c)
		}
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, c := range chunks {
		if _, err := f.WriteAt(c, off); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSparseHashDependsOnContentOnly(t *testing.T) {
	s := newStore(t)
	dir := t.TempDir()
	const size = 8<<20 + 1000 // odd tail block
	data := testutil.Fill("sparse", 70000)
	base := map[int64][]byte{0: data[:10], 3<<20 + 100: data, size - 5: data[:5]}
	// Explicit zeros inside a data region, aligned to 1 KiB, not 4 KiB.
	withZeros := map[int64][]byte{0: data[:10], 3<<20 + 100: data, size - 5: data[:5], 1024: make([]byte, 3000)}

	layouts := []struct {
		name   string
		chunks map[int64][]byte
		dense  bool
	}{
		{"sparse", base, false},
		{"dense", base, true},
		{"sparse with written zeros", withZeros, false},
	}
	var want string
	for i, l := range layouts {
		p := filepath.Join(dir, l.name)
		writeLayout(t, p, size, l.chunks, l.dense)
		got := mustSparse(t, s, p)
		if i == 0 {
			want = got
		} else if got != want {
			t.Errorf("%s: digest %s, want %s (same logical content)", l.name, got, want)
		}
	}

	changed := []struct {
		name   string
		size   int64
		chunks map[int64][]byte
	}{
		{"byte in a hole", size, map[int64][]byte{0: data[:10], 3<<20 + 100: data, size - 5: data[:5], 6 << 20: {1}}},
		{"data byte flipped", size, map[int64][]byte{0: data[:10], 3<<20 + 100: append(bytes.Clone(data[:69999]), data[69999]^1), size - 5: data[:5]}},
		{"data moved by a block", size, map[int64][]byte{0: data[:10], 3<<20 + 100 + 4096: data, size - 5: data[:5]}},
		{"longer zero tail", size + 4096, map[int64][]byte{0: data[:10], 3<<20 + 100: data, size - 5: data[:5]}},
	}
	for _, c := range changed {
		p := filepath.Join(dir, c.name)
		writeLayout(t, p, c.size, c.chunks, false)
		if got := mustSparse(t, s, p); got == want {
			t.Errorf("%s: digest unchanged", c.name)
		}
	}
}

func TestSparseHashSkipsHoles(t *testing.T) {
	if !sparsefile.FindsHoles {
		t.Skip("no SEEK_DATA on " + runtime.GOOS)
	}
	s := newStore(t)
	p := filepath.Join(t.TempDir(), "big")
	writeLayout(t, p, 1<<30, map[int64][]byte{512 << 20: testutil.Fill("x", 1<<20)}, false)
	before := s.hashedBytes.Load()
	mustSparse(t, s, p)
	if n := s.hashedBytes.Load() - before; n > 4<<20 {
		t.Errorf("sparse hash of 1 GiB with 1 MiB data read %d bytes", n)
	}
}

// TestSparseDigestRefusesOutOfOrder: bytes given out of order, or not on a
// block boundary, cannot be the file's digest.
func TestSparseDigestRefusesOutOfOrder(t *testing.T) {
	block := bytes.Repeat([]byte{1}, 4096)
	for _, tt := range []struct {
		name   string
		writes []int64
	}{
		{"backwards", []int64{8192, 4096}},
		{"the same block twice", []int64{4096, 4096}},
		{"not on a block boundary", []int64{100}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := NewSparseDigest(1 << 20)
			for _, off := range tt.writes {
				d.Write(off, block)
			}
			if sum, err := d.Sum(); err == nil {
				t.Fatalf("Sum = %s, want an error", sum)
			}
		})
	}
}
