package qcow2

import (
	"bytes"
	stdflate "compress/flate"
	"io"
	"os"
	"path/filepath"
	"testing"

	kflate "github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// benchClusters returns 64 KiB clusters of realistic guest data (binaries
// and libraries from /usr/bin when present, else the corpus's mixed disk).
func benchClusters(b *testing.B) [][]byte {
	b.Helper()
	var data []byte
	if ents, err := os.ReadDir("/usr/bin"); err == nil {
		for _, e := range ents {
			if len(data) >= 8<<20 {
				break
			}
			if c, err := os.ReadFile(filepath.Join("/usr/bin", e.Name())); err == nil {
				data = append(data, c...)
			}
		}
	}
	if len(data) < 1<<20 {
		img, err := OpenFile(filepath.Join(corpusDir, "valid", "zlib.qcow2"))
		if err != nil {
			b.Fatal(err)
		}
		defer img.Close()
		data = make([]byte, img.Size())
		if _, err := img.ReadAt(data, 0); err != nil {
			b.Fatal(err)
		}
	}
	var clusters [][]byte
	for off := 0; off+65536 <= len(data); off += 65536 {
		clusters = append(clusters, data[off:off+65536])
	}
	return clusters
}

// BenchmarkInflate compares our one-shot inflate with the standard library's
// and klauspost/compress/flate's streaming ones on qcow2-style raw-deflate
// clusters.
func BenchmarkInflate(b *testing.B) {
	clusters := benchClusters(b)
	var compressed [][]byte
	for _, c := range clusters {
		var buf bytes.Buffer
		w, _ := stdflate.NewWriter(&buf, stdflate.DefaultCompression) // QEMU uses zlib's default level
		w.Write(c)
		w.Close()
		compressed = append(compressed, buf.Bytes())
	}
	out := make([]byte, 65536)
	impls := []struct {
		name string
		new  func(io.Reader) io.ReadCloser
	}{
		{"stdlib", stdflate.NewReader},
		{"klauspost", kflate.NewReader},
	}
	b.Run("oneshot", func(b *testing.B) {
		b.SetBytes(int64(len(clusters)) * 65536)
		f := newInflater()
		for b.Loop() {
			for _, c := range compressed {
				if err := f.inflate(out, c); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	for _, impl := range impls {
		b.Run(impl.name, func(b *testing.B) {
			b.SetBytes(int64(len(clusters)) * 65536)
			var src bytes.Reader
			r := impl.new(&src)
			for b.Loop() {
				for _, c := range compressed {
					src.Reset(c)
					if err := r.(stdflate.Resetter).Reset(&src, nil); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(r, out); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkZstdCluster measures streaming zstd decoding per cluster, the way
// decompress does it.
func BenchmarkZstdCluster(b *testing.B) {
	clusters := benchClusters(b)
	enc, _ := zstd.NewWriter(nil)
	var compressed [][]byte
	for _, c := range clusters {
		compressed = append(compressed, enc.EncodeAll(c, nil))
	}
	dec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	defer dec.Close()
	out := make([]byte, 65536)
	b.Run("stream", func(b *testing.B) {
		b.SetBytes(int64(len(clusters)) * 65536)
		var src bytes.Reader
		for b.Loop() {
			for _, c := range compressed {
				src.Reset(c)
				if err := dec.Reset(&src); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(dec, out); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("DecodeAll", func(b *testing.B) {
		// A decoder of its own: with concurrency 1 the streaming one holds its only slot.
		dec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		defer dec.Close()
		b.SetBytes(int64(len(clusters)) * 65536)
		for b.Loop() {
			for _, c := range compressed {
				if _, err := dec.DecodeAll(c, out[:0]); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
