package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to Open, then reads guest data and walks
// the extents: every outcome must be a classified error or data, never a
// panic, hang or huge allocation.
func FuzzOpen(f *testing.F) {
	for _, dir := range []string{"valid", "refuse"} {
		ents, err := os.ReadDir(filepath.Join(corpusDir, dir))
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range ents {
			info, err := e.Info()
			// Large seeds slow the fuzzer down without adding coverage.
			if err != nil || info.Size() > 64<<10 {
				continue
			}
			b, err := os.ReadFile(filepath.Join(corpusDir, dir, e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := Open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrNotQcow2) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		buf := make([]byte, min(img.Size(), 256<<10))
		if _, err := img.ReadAt(buf, 0); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("ReadAt: unclassified error: %v", err)
		}
		var end int64
		n := 0
		for e, err := range img.Extents() {
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Extents: unclassified error: %v", err)
				}
				return
			}
			if e.Offset != end || e.Length <= 0 {
				t.Fatalf("extent %+v does not follow %d", e, end)
			}
			end = e.Offset + e.Length
			if n++; n > 4096 {
				return
			}
		}
		if end != img.Size() {
			t.Fatalf("extents end at %d, virtual size %d", end, img.Size())
		}
	})
}
