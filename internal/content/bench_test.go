package content

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/vmprep/vmprep/internal/testutil"
)

// BenchmarkLookupWarm measures the fast path: stat + stamp read, no hashing.
func BenchmarkLookupWarm(b *testing.B) {
	ctx := context.Background()
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	data := testutil.Fill("bench", 1<<20)
	d := testutil.SHA512Of(data) // through the alias index: the slower of the two
	p := s.IngestPath(d)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Commit(ctx, p, d, 0); err != nil {
		b.Fatal(err)
	}
	before := s.hashedBytes.Load()
	for b.Loop() {
		if _, err := s.Lookup(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
	if s.hashedBytes.Load() != before {
		b.Fatal("warm lookup hashed")
	}
}

// BenchmarkCommit measures verify-and-publish throughput of a 64 MiB file
// (page-cache hot: the download engine has just written it).
func BenchmarkCommit(b *testing.B) {
	for _, alg := range []string{"sha256", "sha512"} {
		b.Run(alg, func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			data := testutil.Fill("commit-bench", 64<<20)
			b.SetBytes(int64(len(data)))
			i := 0
			for b.Loop() {
				b.StopTimer()
				data[0] = byte(i)
				i++
				d := testutil.SHA256Of(data)
				if alg == "sha512" {
					d = testutil.SHA512Of(data)
				}
				p := s.IngestPath(d)
				if err := os.WriteFile(p, data, 0o644); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				info, err := s.Commit(ctx, p, d, int64(len(data)))
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.Remove(info.Path)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkPutDerivedHash measures what the store adds after a producer: one
// SHA-256 pass over the output, here a 1 GiB sparse raw with 64 MiB of data.
func BenchmarkPutDerivedHash(b *testing.B) {
	ctx := context.Background()
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	const size = 1 << 30
	chunk := testutil.Fill("raw", 64<<20)
	b.SetBytes(size)
	i := 0
	for b.Loop() {
		b.StopTimer()
		k := DerivedKey{Source: testutil.SHA256Of([]byte(fmt.Sprint(i))), Converter: "bench-1", Format: "raw"}
		i++
		b.StartTimer()
		path, err := s.PutDerived(ctx, k, func(ctx context.Context, dst string) error {
			b.StopTimer() // only the store's own work is timed
			defer b.StartTimer()
			return WriteAtomic(dst, 0o644, func(f *os.File) error {
				if err := f.Truncate(size); err != nil {
					return err
				}
				_, err := f.WriteAt(chunk, size/2)
				return err
			})
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.Remove(path)
		b.StartTimer()
	}
}
