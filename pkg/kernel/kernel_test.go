package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func gz(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestGunzip(t *testing.T) {
	image := make([]byte, 3<<20)
	if _, err := rand.Read(image[:1<<20]); err != nil {
		t.Fatal(err)
	}
	good := gz(t, image)
	tests := []struct {
		name     string
		src      []byte
		max      int64
		wantGzip bool
		wantErr  error
		wantAny  bool // some error, no particular sentinel
	}{
		{name: "arm64-style gzip Image", src: good, wantGzip: true},
		{name: "plain Image", src: image, wantGzip: false, wantAny: true},
		{name: "empty", src: nil, wantGzip: false, wantAny: true},
		{name: "truncated gzip", src: good[:len(good)/2], wantGzip: true, wantAny: true},
		{name: "bomb over the cap", src: good, max: 1 << 20, wantGzip: true, wantErr: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "vmlinux")
			if err := os.WriteFile(src, tt.src, 0o644); err != nil {
				t.Fatal(err)
			}
			isGz, err := IsGzip(src)
			if err != nil || isGz != tt.wantGzip {
				t.Fatalf("IsGzip = %v, %v; want %v", isGz, err, tt.wantGzip)
			}
			err = Gunzip(context.Background(), src, dst, tt.max)
			if tt.wantErr != nil || tt.wantAny {
				if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
					t.Fatalf("Gunzip error = %v, want %v", err, tt.wantErr)
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
				t.Fatal("decompressed kernel differs")
			}
		})
	}
}
