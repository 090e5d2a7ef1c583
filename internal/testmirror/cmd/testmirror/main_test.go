package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The command serves a mirror whose signed listing an operator's resolver
// can read, writes the key where it was told, and stops when interrupted.
func TestServesUntilInterrupted(t *testing.T) {
	keyring := filepath.Join(t.TempDir(), "keyring.asc")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--keyring", keyring, "--arch", "amd64"}, w, io.Discard)
		w.Close()
	}()
	lines := bufio.NewScanner(r)
	got := map[string]string{}
	for len(got) < 2 && lines.Scan() {
		k, v, _ := strings.Cut(lines.Text(), ": ")
		got[k] = v
	}
	if got["keyring"] != keyring {
		t.Errorf("keyring line %q, want %q", got["keyring"], keyring)
	}
	if key, err := os.ReadFile(keyring); err != nil || !strings.Contains(string(key), "BEGIN PGP PUBLIC KEY BLOCK") {
		t.Errorf("keyring file: %v\n%s", err, key)
	}
	resp, err := http.Get(got["mirror"] + "releases/24.04/release/SHA256SUMS")
	if err != nil {
		t.Fatalf("mirror %q: %v", got["mirror"], err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "amd64") {
		t.Errorf("SHA256SUMS: %s\n%s", resp.Status, body)
	}
	cancel()
	go func() { _, _ = io.Copy(io.Discard, r) }()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestRejectsBadArch(t *testing.T) {
	err := run(context.Background(), []string{"--arch", "sparc"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `--arch "sparc"`) {
		t.Errorf("run --arch sparc: %v, want an error naming the flag", err)
	}
}
