package download

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmprep/vmprep/pkg/digest"
)

// BenchmarkFetch measures a loopback download with in-stream hashing,
// pipelined (the default) and sequential.
// The served file is small enough for CI; bench/fetch/run.sh measures 1 GiB
// against curl.
func BenchmarkFetch(b *testing.B) {
	const size = 64 << 20
	content := randomBytes(size, 42)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", modTime, bytes.NewReader(content))
	}))
	defer srv.Close()
	for _, bc := range []struct {
		name     string
		expected digest.Digest
		ring     int
	}{
		{"sha256", sha256Of(content), ringBuffers},
		{"sha512", sha512Of(content), ringBuffers},
		// One buffer: read and hash take turns, as without the pipeline.
		{"sha256-sequential", sha256Of(content), 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := New()
			c.ringBuffers = bc.ring
			dest := filepath.Join(b.TempDir(), "bench.part")
			b.SetBytes(size)
			for b.Loop() {
				if _, err := c.Fetch(context.Background(), Request{URL: srv.URL, Dest: dest, ExpectedSize: size, Expected: bc.expected}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.Remove(dest)
				RemoveSidecar(dest)
				b.StartTimer()
			}
		})
	}
}
