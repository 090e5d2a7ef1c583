package follow

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
)

// BenchmarkFollow follows a 64 MiB file written in 1 MiB chunks, with a
// pause between chunks (a download at that rate) or none, and reports how
// often the follower looked at a file that had not grown, and the CPU
// time the follow took beyond hashing is in those polls (an fstat and a
// timer each).
func BenchmarkFollow(b *testing.B) {
	data := testutil.Fill("bench", 64<<20)
	for _, bc := range []struct {
		name  string
		pause time.Duration
	}{{"unpaced", 0}, {"1MiB-per-5ms", 5 * time.Millisecond}, {"1MiB-per-50ms", 50 * time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var polls int64
			var wall time.Duration
			for range b.N {
				path := filepath.Join(b.TempDir(), "ingest")
				fl, err := Start(context.Background(), path, testutil.SHA256Of(data), int64(len(data)), Options{})
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				f, err := os.Create(path)
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < len(data); off += 1 << 20 {
					if _, err := f.Write(data[off : off+1<<20]); err != nil {
						b.Fatal(err)
					}
					if bc.pause > 0 {
						time.Sleep(bc.pause) // the download's pace
					}
				}
				if err := fl.Wait(context.Background()); err != nil {
					b.Fatal(err)
				}
				wall += time.Since(start)
				polls += fl.Polls()
				_ = f.Close()
				_ = fl.Close()
			}
			b.ReportMetric(float64(polls)/float64(b.N), "polls/op")
			b.ReportMetric(float64(polls)/wall.Seconds(), "polls/s")
		})
	}
}
