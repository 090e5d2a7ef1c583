package download

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestReportedBytesAreInTheFile (issue 16, item 5): progress counted bytes
// still in the read buffer (up to 1 MiB on a slow link, where a buffer takes
// seconds to fill), so a process killed after showing 360 KiB had written
// none of it. Every report now counts only bytes already in the file, and a
// slow link's bytes reach the file a few times a second.
func TestReportedBytesAreInTheFile(t *testing.T) {
	content := randomBytes(1<<20, 7)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		for off := 0; off < len(content); off += 32 << 10 { // ~640 KiB/s
			if _, err := w.Write(content[off : off+32<<10]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
	}))
	defer srv.Close()
	dest := filepath.Join(t.TempDir(), "partial")
	c, _ := newTestClient()
	var (
		mu      sync.Mutex
		reports int
		ahead   []string
	)
	_, err := c.Fetch(t.Context(), Request{URL: srv.URL + "/f", Dest: dest, ExpectedSize: int64(len(content)), Expected: sha256Of(content),
		Progress: func(p Progress) {
			fi, err := os.Stat(dest)
			mu.Lock()
			defer mu.Unlock()
			reports++
			if err != nil || fi.Size() < p.Done {
				ahead = append(ahead, strconv.FormatInt(p.Done, 10)+" reported, "+strconv.FormatInt(fi.Size(), 10)+" in the file")
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if reports < 3 {
		t.Errorf("%d progress reports over a download of more than a second, want several", reports)
	}
	if len(ahead) > 0 {
		t.Errorf("progress reported bytes not yet in the file: %v", ahead)
	}
}
