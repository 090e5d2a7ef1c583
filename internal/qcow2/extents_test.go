package qcow2

import (
	"bytes"
	"testing"
)

// TestHugeEmptyImage: a 2 MiB-cluster image whose L1 (held in a small file)
// describes petabytes must be walked in one step per unallocated L1 range (go test's
// timeout catches a regression to per-cluster walking).
func TestHugeEmptyImage(t *testing.T) {
	const cs = 2 << 20
	const l1Entries = 4096 // 32 KiB of L1 → 4096 × 512 GiB of guest space
	b := make([]byte, 3*cs)
	copy(b, "QFI\xfb")
	putU32(b, 4, 3)
	putU32(b, 20, 21)
	putU64(b, 24, l1Entries*(cs*(cs/8))) // virtual size
	putU32(b, 36, l1Entries)
	putU64(b, 40, cs)   // L1 at cluster 1
	putU64(b, 48, 2*cs) // refcount table at cluster 2
	putU32(b, 56, 1)
	putU32(b, 96, 4)
	putU32(b, 100, 104)
	img, err := Open(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var covered int64
	for e, err := range img.Extents() {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind != ExtentUnallocated {
			t.Fatalf("unexpected extent %+v", e)
		}
		covered += e.Length
		n++
	}
	if n != 1 || covered != img.Size() {
		t.Fatalf("%d extents covering %d bytes, want 1 covering %d", n, covered, img.Size())
	}
}
