package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
)

// cacheFixture makes a real store with one blob used by an image and a
// record, and one unused blob.
func cacheFixture(t *testing.T) (root string, used, unused content.BlobInfo) {
	t.Helper()
	ctx := context.Background()
	root = filepath.Join(t.TempDir(), "cache")
	st, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) content.BlobInfo {
		sum := sha256.Sum256(b)
		d := digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(sum[:])}
		if err := os.WriteFile(st.IngestPath(d), b, 0o644); err != nil {
			t.Fatal(err)
		}
		info, err := st.Commit(ctx, st.IngestPath(d), d, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	used = put(bytes.Repeat([]byte("k"), 3<<20))
	unused = put([]byte("left over"))
	spec := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}
	if _, err := st.LinkImage(t.Context(), spec, store.LinkKernel, used.Path); err != nil {
		t.Fatal(err)
	}
	raw, err := st.PutDerived(ctx, content.DerivedKey{Source: used.SHA256, Converter: "test-1", Format: "raw"}, func(ctx context.Context, dst string) error {
		return content.WriteAtomic(dst, 0o644, func(f *os.File) error { return f.Truncate(1 << 30) })
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.LinkImage(t.Context(), spec, store.LinkDiskRaw, raw); err != nil {
		t.Fatal(err)
	}
	if err := st.SaveResolution(ctx, catalog.Resolution{Spec: spec, Roots: &catalog.TrustRoots{Mirror: "https://cloud-images.ubuntu.com/"}, Assets: []image.Asset{{Role: image.RoleKernel, Digest: used.SHA256}}}); err != nil {
		t.Fatal(err)
	}
	return root, used, unused
}

func runCacheT(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runCache(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCacheLs(t *testing.T) {
	root, used, unused := cacheFixture(t)
	tests := []struct {
		name string
		args []string
		env  string
	}{
		{"flag after", []string{"ls", "--cache-dir", root}, ""},
		{"flag before", []string{"--cache-dir", root, "ls"}, ""},
		{"env", []string{"ls"}, root},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(content.EnvCacheDir, tc.env)
			code, out, errOut := runCacheT(t, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, want := range []string{
				"KIND", "sha256:" + used.SHA256.Hex[:12], "3.0 MiB", "ubuntu/24.04/amd64/vmlinuz",
				"record ubuntu/24.04/amd64", "sha256:" + unused.SHA256.Hex[:12], "(unused)", "2 blobs, 1 derived", "derived", "raw of sha256:" + used.SHA256.Hex[:12] + " (test-1)", "1.0 GiB", "ubuntu/24.04/amd64/disk.raw",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
	code, out, _ := runCacheT(t, "ls", "--json", "--cache-dir", root)
	if code != 0 {
		t.Fatalf("ls --json exit %d", code)
	}
	var entries []content.Entry
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, out)
	}
	if len(entries) != 3 || entries[0].Kind != content.KindBlob || entries[2].Kind != content.KindDerived {
		t.Errorf("entries %+v", entries)
	}
	for _, e := range entries {
		if e.Digest == used.SHA256 && (e.Size != used.Size || len(e.Images) != 1 || len(e.Records) != 1) {
			t.Errorf("used entry %+v", e)
		}
		// The 1 GiB raw disk of the fixture is all hole: it takes (almost) nothing.
		if e.Kind == content.KindDerived && (e.Size != 1<<30 || e.Allocated >= 1<<20) {
			t.Errorf("sparse derived entry: size %d, allocated %d; want 1 GiB apparent, under 1 MiB allocated", e.Size, e.Allocated)
		}
	}
}

// TestCacheLsCountsDiskSpace: the total says what the files take on disk,
// not only the apparent size a sparse raw disk inflates.
func TestCacheLsCountsDiskSpace(t *testing.T) {
	root, _, _ := cacheFixture(t)
	code, out, errOut := runCacheT(t, "ls", "--cache-dir", root)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.Contains(lines[0], "ON DISK") {
		t.Errorf("header lacks ON DISK: %q", lines[0])
	}
	total := lines[len(lines)-1]
	// 3 MiB + 9 bytes of blobs and a 1 GiB hole: about 3 MiB on disk.
	if !strings.Contains(total, "3.0 MiB on disk") || !strings.Contains(total, "1.0 GiB apparent") {
		t.Errorf("total line %q: want 3.0 MiB on disk and 1.0 GiB apparent", total)
	}
}

func TestCacheVerify(t *testing.T) {
	root, used, unused := cacheFixture(t)
	code, out, errOut := runCacheT(t, "verify", "--cache-dir", root)
	if code != 0 || strings.Count(out, "ok ") != 3 {
		t.Fatalf("verify clean: exit %d\n%s%s", code, out, errOut)
	}
	// Corrupt the unused blob.
	if err := os.Chmod(unused.Path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(unused.Path, []byte("LEFT OVER"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCacheT(t, "verify", "--cache-dir", root)
	if code != 1 || !strings.Contains(out, "BAD") || !strings.Contains(out, unused.SHA256.Hex) || !strings.Contains(errOut, "1 of 3") {
		t.Errorf("verify corrupt: exit %d\n%s%s", code, out, errOut)
	}
	// Said once, in words: what was wrong and where it went.
	bad := "BAD   blobs/sha256/" + unused.SHA256.Hex + ": content no longer matches its digest; moved to quarantine/"
	if !strings.Contains(out, bad) || strings.Contains(out, "not found") || strings.Contains(out, "quarantined (") {
		t.Errorf("verify's report of the bad blob: want a line starting %q, got:\n%s", bad, out)
	}
	// It was quarantined, so the next run is clean.
	code, out, _ = runCacheT(t, "verify", "--json", "--cache-dir", root)
	var lines []map[string]any
	if err := json.Unmarshal([]byte(out), &lines); err != nil || code != 0 || len(lines) != 2 || lines[0]["path"] != used.Path {
		t.Errorf("verify after quarantine: exit %d, %v\n%s", code, err, out)
	}
}

func TestCacheGC(t *testing.T) {
	root, used, unused := cacheFixture(t)
	// Inside the default grace period nothing is removed.
	code, out, errOut := runCacheT(t, "gc", "--cache-dir", root)
	if code != 0 || !strings.Contains(out, "removed 0 files") {
		t.Fatalf("gc within grace: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = runCacheT(t, "gc", "--dry-run", "--min-age=-1s", "--cache-dir", root)
	if code != 0 || !strings.Contains(out, "would remove") || !strings.Contains(out, unused.SHA256.Hex) {
		t.Errorf("gc --dry-run: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(unused.Path); err != nil {
		t.Errorf("dry run removed %s", unused.Path)
	}
	code, out, _ = runCacheT(t, "gc", "--min-age=-1s", "--partial-max-age", "1h", "--json", "--cache-dir", root)
	var rep content.GCReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 {
		t.Fatalf("gc --json: exit %d, %v\n%s", code, err, out)
	}
	if len(rep.Removed) != 1 || rep.Removed[0].Path != unused.Path || rep.Freed != unused.Size {
		t.Errorf("gc report %+v", rep)
	}
	if _, err := os.Stat(unused.Path); !os.IsNotExist(err) {
		t.Errorf("unused blob still there: %v", err)
	}
	if _, err := os.Stat(used.Path); err != nil {
		t.Errorf("used blob removed: %v", err)
	}
}

// TestSubcommandHelp: -h and --help of every subcommand print its own
// synopsis (not Go's "Usage of …") and exit 0; version's help is not the version.
func TestSubcommandHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cache", "ls", "--help"}, "usage: vmprep cache ls"},
		{[]string{"cache", "verify", "-h"}, "usage: vmprep cache verify"},
		{[]string{"cache", "gc", "--help"}, "usage: vmprep cache gc"},
		{[]string{"version", "--help"}, "usage: vmprep version"},
		{[]string{"version", "-h"}, "usage: vmprep version"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != 0 || !strings.HasPrefix(stderr.String(), tc.want) || strings.Contains(stderr.String(), "Usage of") {
				t.Errorf("exit %d, stderr %q; want exit 0 and %q", code, stderr.String(), tc.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("help printed on stdout: %q", stdout.String())
			}
		})
	}
}

func TestCacheUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nothing-here")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no command", nil, 2, "usage"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"bad flag", []string{"ls", "--nope"}, 2, "nope"},
		{"gc flag on ls", []string{"ls", "--dry-run"}, 2, "dry-run"},
		{"bad duration", []string{"gc", "--partial-max-age", "soon"}, 2, "partial-max-age"},
		{"stray argument", []string{"ls", "--cache-dir", missing, "extra"}, 2, "unexpected argument"},
		{"missing store", []string{"ls", "--cache-dir", missing}, 0, "no store at"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCacheT(t, tc.args...)
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("exit %d (want %d), stderr %q (want %q)", code, tc.wantCode, errOut, tc.wantErr)
			}
		})
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("looking at a missing store created it: %v", err)
	}
}

// TestCacheGCReportsFailures: a file GC cannot remove (here a non-empty
// directory planted where a blob belongs, which even root cannot unlink) is
// named on stderr and makes the exit status 1, in table and JSON modes.
func TestCacheGCReportsFailures(t *testing.T) {
	root, _, _ := cacheFixture(t)
	debris := filepath.Join(root, "blobs", "sha256", strings.Repeat("ab", 32))
	if err := os.MkdirAll(debris, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(debris, "inner"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"gc"}, {"gc", "--json"}} {
		code, out, errOut := runCacheT(t, append(args, "--partial-max-age=1ns", "--cache-dir", root)...)
		if code != 1 || !strings.Contains(errOut, debris) {
			t.Errorf("%v: exit %d (want 1), stderr %q should name %s\n%s", args, code, errOut, debris, out)
		}
	}
}

// TestCacheMissingStoreJSON: --json output keeps its shape when there is no store.
func TestCacheMissingStoreJSON(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nothing-here")
	tests := []struct {
		cmd  string
		into any
	}{
		{"ls", &[]content.Entry{}},
		{"verify", &[]content.VerifyResult{}},
		{"gc", &content.GCReport{}},
	}
	for _, tc := range tests {
		code, out, errOut := runCacheT(t, tc.cmd, "--json", "--cache-dir", missing)
		if err := json.Unmarshal([]byte(out), tc.into); code != 0 || err != nil {
			t.Errorf("%s --json on a missing store: exit %d, %v\n%s%s", tc.cmd, code, err, out, errOut)
		}
	}
}

// TestCacheGCSaysWhyItWaits: gc waits for a running conversion, and says so
// on stderr instead of looking hung; it then completes.
func TestCacheGCSaysWhyItWaits(t *testing.T) {
	root, used, _ := cacheFixture(t)
	st, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	derived := make(chan error, 1)
	go func() {
		_, err := st.PutDerived(context.Background(), content.DerivedKey{Source: used.SHA256, Converter: "slow-1", Format: "raw"},
			func(ctx context.Context, dst string) error {
				close(started)
				<-release
				return content.WriteAtomic(dst, 0o644, func(f *os.File) error { _, err := f.Write([]byte("raw")); return err })
			})
		derived <- err
	}()
	<-started
	var stdout, stderr testutil.LockedBuffer
	code := make(chan int, 1)
	go func() { code <- runCache(context.Background(), []string{"gc", "--cache-dir", root}, &stdout, &stderr) }()
	hung := time.After(30 * time.Second) // a hang detector, not a timing assertion
	for !strings.Contains(stderr.String(), "waiting for running commits and conversions") {
		select {
		case c := <-code:
			t.Fatalf("gc finished (exit %d) while a conversion held the store; stderr %q", c, stderr.String())
		case <-hung:
			close(release)
			t.Fatalf("gc waits for the conversion without saying so; stderr %q", stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	close(release)
	if err := <-derived; err != nil {
		t.Fatal(err)
	}
	if c := <-code; c != 0 {
		t.Errorf("gc exit %d after the conversion finished; stderr %q", c, stderr.String())
	}
}
