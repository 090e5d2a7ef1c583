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
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--keyring", keyring, "--arch", "amd64"}, w, io.Discard, nil)
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
	err := run(context.Background(), []string{"--arch", "sparc"}, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), `--arch "sparc"`) {
		t.Errorf("run --arch sparc: %v, want an error naming the flag", err)
	}
}

// TestFlagsAndPublishOnSignal (issue 16, item 8): --serials publishes
// several builds, --disk-size sets the disks' size, and what SIGHUP does
// (a receive on publish) adds a build a day after the newest, printed and
// listed in the version directory with its signed manifest.
func TestFlagsAndPublishOnSignal(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, w := io.Pipe()
	publish := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--arch", "amd64", "--serials", "20261119,20261120", "--disk-size", "32M:12M", "--throttle", "64M"}, w, io.Discard, publish)
		w.Close()
	}()
	lines := bufio.NewScanner(r)
	got := map[string]string{}
	for len(got) < 3 && lines.Scan() {
		k, v, _ := strings.Cut(lines.Text(), ": ")
		got[k] = v
	}
	if got["serials"] != "24.04 20261120,20261119" {
		t.Errorf("serials line %q, want both builds, newest first", got["serials"])
	}
	get := func(rel string) (int, string) {
		t.Helper()
		resp, err := http.Get(got["mirror"] + rel)
		if err != nil {
			t.Fatalf("mirror %q: %v", got["mirror"], err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("releases/24.04/release-20261119/ubuntu-24.04-server-cloudimg-amd64.img"); code != http.StatusOK || len(body) < 6<<20 {
		t.Errorf("the older build's disk: %d, %d bytes (want at least half the 12 MiB of data: half of it is random)", code, len(body))
	}

	publish <- struct{}{}
	if !lines.Scan() || lines.Text() != "published: 24.04 20261121" {
		t.Fatalf("after SIGHUP: %q, want the new serial", lines.Text())
	}
	if _, listing := get("releases/24.04/"); !strings.Contains(listing, "release-20261121/") {
		t.Errorf("the new build is not listed:\n%s", listing)
	}
	if code, sums := get("releases/24.04/release-20261121/SHA256SUMS"); code != http.StatusOK || !strings.Contains(sums, "amd64") {
		t.Errorf("the new build's SHA256SUMS: %d\n%s", code, sums)
	}
	cancel()
	go func() { _, _ = io.Copy(io.Discard, r) }()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--disk-size", "1G:2G"}, `--disk-size "1G:2G"`},
		{[]string{"--disk-size", "big"}, `--disk-size "big": virtual size: "big" is not a size`},
		{[]string{"--throttle", "fast"}, `--throttle "fast"`},
		{[]string{"--throttle", "0"}, `--throttle "0"`},
		{[]string{"--serials", "20261120,latest"}, `--serials: "latest" is not a serial of the form YYYYMMDD`},
	} {
		err := run(context.Background(), tc.args, io.Discard, io.Discard, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
