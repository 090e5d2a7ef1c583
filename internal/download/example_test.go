package download_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/pkg/digest"
)

func Example() {
	body := strings.Repeat("vmlinuz ", 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(body))
	}))
	defer srv.Close()
	sum := sha256.Sum256([]byte(body))
	expected, _ := digest.New(digest.SHA256, hex.EncodeToString(sum[:]))

	dir, _ := os.MkdirTemp("", "ingest")
	defer os.RemoveAll(dir)
	dest := filepath.Join(dir, "kernel.partial")

	client := download.New(download.WithStallTimeout(30 * time.Second))
	res, err := client.Fetch(context.Background(), download.Request{
		URL: srv.URL + "/vmlinuz", Dest: dest, Name: "kernel",
		ExpectedSize: int64(len(body)), Expected: expected,
	})
	if err != nil {
		log.Fatal(err)
	}
	// The caller commits the file (here: a rename), then drops the sidecar.
	if err := os.Rename(dest, filepath.Join(dir, "kernel")); err != nil {
		log.Fatal(err)
	}
	if err := download.RemoveSidecar(dest); err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Size, res.Digest == expected, res.Resumed)
	// Output: 8000 true false
}
