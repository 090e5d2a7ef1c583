// Package testutil holds small helpers shared by the integration tests:
// digests of files and qemu-img's conversion as the yardstick.
package testutil

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/messages"
)

// FileSHA256 returns the hex SHA-256 of the file at path.
func FileSHA256(tb testing.TB, path string) string {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// QemuRawSHA256 converts the qcow2 at src to raw with qemu-img and returns the
// output's SHA-256. It fails the test if qemu-img is missing (CI installs it).
func QemuRawSHA256(tb testing.TB, src string) string {
	tb.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		tb.Fatalf("qemu-img is needed (apt-get install qemu-utils): %v", err)
	}
	out := filepath.Join(tb.TempDir(), "want.raw")
	if b, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, out).CombinedOutput(); err != nil {
		tb.Fatalf("qemu-img convert: %v\n%s", err, b)
	}
	return FileSHA256(tb, out)
}

// LockedBuffer is a bytes.Buffer safe for one goroutine writing (a child
// process's output, say) while another reads.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Prepare runs one request through the Go client and returns its result,
// failed or not: a *client.FailedError is not an error here, since tests
// look at the result's failure themselves.
func Prepare(ctx context.Context, nc *nats.Conn, req messages.PrepareRequest, onProgress func(messages.Progress)) (messages.Result, error) {
	c, err := client.New(nc)
	if err != nil {
		return messages.Result{}, err
	}
	var opts []client.PrepareOption
	if onProgress != nil {
		opts = append(opts, client.WithProgress(onProgress))
	}
	res, err := c.Prepare(ctx, req, opts...)
	var failed *client.FailedError
	if errors.As(err, &failed) {
		err = nil
	}
	return res, err
}
