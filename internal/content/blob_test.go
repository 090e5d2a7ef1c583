package content

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/digest"
)

func TestCommit(t *testing.T) {
	data := testutil.Fill("commit", 3<<20+17) // spans several hash buffers
	other := testutil.Fill("other", 100)
	tests := []struct {
		name     string
		expected digest.Digest
		size     int64
		wantErr  []error // all must match; nil: success
	}{
		{name: "sha256", expected: testutil.SHA256Of(data), size: int64(len(data))},
		{name: "sha256 size unknown", expected: testutil.SHA256Of(data), size: 0},
		{name: "sha512 alias", expected: testutil.SHA512Of(data), size: int64(len(data))},
		{name: "upper-case hex", expected: digest.Digest{Algorithm: digest.SHA256, Hex: strings.ToUpper(testutil.SHA256Of(data).Hex)}},
		{name: "wrong sha256", expected: testutil.SHA256Of(other), wantErr: []error{ErrDigestMismatch, ErrQuarantined}},
		{name: "wrong sha512", expected: testutil.SHA512Of(other), wantErr: []error{ErrDigestMismatch, ErrQuarantined}},
		{name: "short file", expected: testutil.SHA256Of(data), size: int64(len(data)) + 1, wantErr: []error{ErrSizeMismatch, ErrDigestMismatch, ErrQuarantined}},
		{name: "long file", expected: testutil.SHA256Of(data), size: int64(len(data)) - 1, wantErr: []error{ErrSizeMismatch, ErrDigestMismatch}},
		{name: "invalid digest", expected: digest.Digest{Algorithm: digest.SHA256, Hex: "../../etc/passwd"}, wantErr: []error{digest.ErrInvalid}},
		{name: "md5 refused", expected: digest.Digest{Algorithm: "md5", Hex: strings.Repeat("0", 32)}, wantErr: []error{digest.ErrUnsupportedAlgorithm}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t)
			// Write the ingest file where a valid digest would put it; for an
			// invalid one use a fixed name.
			p := s.IngestPath(tc.expected)
			if p == "" {
				p = filepath.Join(s.Root(), dirIngest, "x")
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p+".meta", []byte("{}"), 0o644); err != nil {
				t.Fatal(err)
			}
			info, err := s.Commit(ctx, p, tc.expected, tc.size)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("Commit succeeded, want %v", tc.wantErr)
				}
				for _, want := range tc.wantErr {
					if !errors.Is(err, want) {
						t.Errorf("error %q does not match %v", err, want)
					}
				}
				if got := testutil.DirNames(t, filepath.Join(s.Root(), dirBlobs, "sha256")); len(got) != 0 {
					t.Errorf("blobs after failed commit: %v", got)
				}
				var me *MismatchError
				if errors.As(err, &me) {
					if me.Expected.Hex != strings.ToLower(tc.expected.Hex) {
						t.Errorf("MismatchError.Expected = %v, want %v", me.Expected, tc.expected)
					}
					if !strings.Contains(err.Error(), tc.expected.Hex) {
						t.Errorf("error %q does not name the expected digest", err)
					}
					q, rerr := os.ReadFile(me.QuarantinePath)
					if rerr != nil || !bytes.Equal(q, data) {
						t.Errorf("quarantined file %s: %v (content equal: %v)", me.QuarantinePath, rerr, bytes.Equal(q, data))
					}
					var note quarantineNote
					nb, _ := os.ReadFile(me.QuarantinePath + ".note.json")
					if err := json.Unmarshal(nb, &note); err != nil || note.Reason == "" || note.Original != p {
						t.Errorf("quarantine note %s: %+v, %v", nb, note, err)
					}
					if _, err := os.Stat(p); !os.IsNotExist(err) {
						t.Errorf("ingest file still present after mismatch: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := testutil.SHA256Of(data)
			if info.SHA256 != want || info.Size != int64(len(data)) || info.Path != filepath.Join(s.Root(), "blobs", "sha256", want.Hex) {
				t.Errorf("Commit = %+v, want sha256 %v size %d", info, want, len(data))
			}
			fi, err := os.Stat(info.Path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o444 {
				t.Errorf("blob mode %v, want 0444", fi.Mode().Perm())
			}
			if got, _ := os.ReadFile(info.Path); !bytes.Equal(got, data) {
				t.Error("blob content differs")
			}
			if left := testutil.DirNames(t, filepath.Join(s.Root(), dirIngest)); len(left) != 0 {
				t.Errorf("ingest not cleaned: %v", left)
			}
			got, err := s.Lookup(ctx, tc.expected)
			if err != nil || got != info {
				t.Errorf("Lookup(%v) = %+v, %v; want %+v", tc.expected, got, err, info)
			}
		})
	}
}

func TestCommitRefusesPathsOutsideIngest(t *testing.T) {
	s := newStore(t)
	data := []byte("hello")
	d := testutil.SHA256Of(data)
	for _, p := range []string{
		filepath.Join(t.TempDir(), "file"),
		filepath.Join(s.Root(), dirBlobs, "sha256", d.Hex),
		filepath.Join(s.Root(), dirIngest, "sub", "file"),
		s.IngestPath(d) + "/../../derived/x",
	} {
		if _, err := s.Commit(context.Background(), p, d, 0); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Commit(%s) = %v, want ErrInvalidName", p, err)
		}
	}
}

func TestCommitIdempotent(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := testutil.Fill("idem", 1000)
	first := commit(t, s, data)
	stampBefore, err := os.ReadFile(s.blobStampPath(first.SHA256.Hex))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []digest.Digest{testutil.SHA256Of(data), testutil.SHA512Of(data)} {
		p := ingest(t, s, d, data)
		info, err := s.Commit(ctx, p, d, int64(len(data)))
		if err != nil || info != first {
			t.Fatalf("second Commit(%v) = %+v, %v; want %+v", d, info, err, first)
		}
		if left := testutil.DirNames(t, filepath.Join(s.Root(), dirIngest)); len(left) != 0 {
			t.Errorf("ingest not cleaned: %v", left)
		}
	}
	if got := testutil.DirNames(t, filepath.Join(s.Root(), dirBlobs, "sha256")); len(got) != 1 {
		t.Errorf("blobs: %v, want one", got)
	}
	stampAfter, _ := os.ReadFile(s.blobStampPath(first.SHA256.Hex))
	if !bytes.Equal(stampBefore, stampAfter) {
		t.Error("idempotent commit rewrote the existing blob")
	}
	// The second commit by SHA-512 added the alias.
	if got, err := s.Lookup(ctx, testutil.SHA512Of(data)); err != nil || got != first {
		t.Errorf("Lookup(sha512) = %+v, %v", got, err)
	}
}

func TestLookupFastPathReadsNothing(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := testutil.Fill("fast", 2<<20)
	info := commit(t, s, data)
	for _, d := range []digest.Digest{testutil.SHA256Of(data)} {
		before := s.hashedBytes.Load()
		for range 5 {
			if _, err := s.Lookup(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		if n := s.hashedBytes.Load() - before; n != 0 {
			t.Errorf("warm Lookup hashed %d bytes, want 0", n)
		}
	}
	// A changed stamp (touch: same content, new mtime) costs one re-hash, then
	// the blob is re-sealed and the fast path applies again.
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(info.Path, old, old); err != nil {
		t.Fatal(err)
	}
	before := s.hashedBytes.Load()
	if got, err := s.Lookup(ctx, info.SHA256); err != nil || got != info {
		t.Fatalf("Lookup after touch = %+v, %v", got, err)
	}
	if n := s.hashedBytes.Load() - before; n != int64(len(data)) {
		t.Errorf("Lookup after touch hashed %d bytes, want %d", n, len(data))
	}
	before = s.hashedBytes.Load()
	if _, err := s.Lookup(ctx, info.SHA256); err != nil {
		t.Fatal(err)
	}
	if n := s.hashedBytes.Load() - before; n != 0 {
		t.Errorf("Lookup after re-seal hashed %d bytes, want 0", n)
	}
}

func TestLookupDamagedBlob(t *testing.T) {
	data := testutil.Fill("damage", 64<<10)
	tests := []struct {
		name           string
		damage         func(t *testing.T, path string)
		wantQuarantine bool
	}{
		{name: "byte flipped", damage: func(t *testing.T, p string) { overwriteByte(t, p, 1000) }, wantQuarantine: true},
		{name: "byte flipped, mtime restored", damage: func(t *testing.T, p string) {
			fi := mustLstat(t, p)
			overwriteByte(t, p, 7)
			if err := os.Chmod(p, fi.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}, wantQuarantine: stampTracksChange}, // caught by ctime where the stamp records it
		{name: "truncated", damage: func(t *testing.T, p string) {
			if err := os.Chmod(p, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, 10); err != nil {
				t.Fatal(err)
			}
		}, wantQuarantine: true},
		{name: "replaced by symlink", damage: func(t *testing.T, p string) {
			other := filepath.Join(t.TempDir(), "evil")
			if err := os.WriteFile(other, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(other, p); err != nil {
				t.Fatal(err)
			}
		}, wantQuarantine: true},
		{name: "stamp lost, content intact", damage: func(t *testing.T, p string) {
			if err := os.Remove(filepath.Join(filepath.Dir(p), "..", "..", dirStamps, "blobs", filepath.Base(p))); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "stamp garbage, content intact", damage: func(t *testing.T, p string) {
			sp := filepath.Join(filepath.Dir(p), "..", "..", dirStamps, "blobs", filepath.Base(p))
			if err := os.WriteFile(sp, bytes.Repeat([]byte("x"), maxStampBytes*2), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "deleted", damage: func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t)
			info := commit(t, s, data)
			tc.damage(t, info.Path)
			got, err := s.Lookup(ctx, testutil.SHA256Of(data))
			if tc.name == "deleted" {
				if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrQuarantined) {
					t.Fatalf("Lookup = %v, want plain ErrNotFound", err)
				}
				return
			}
			if !tc.wantQuarantine {
				if err != nil || got != info {
					t.Fatalf("Lookup = %+v, %v; want %+v", got, err, info)
				}
				if _, ok := stampMatches(s.blobStampPath(info.SHA256.Hex), mustLstat(t, info.Path)); !ok {
					t.Error("stamp not restored")
				}
				return
			}
			if !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrQuarantined) {
				t.Fatalf("Lookup = %+v, %v; want ErrNotFound and ErrQuarantined", got, err)
			}
			if _, err := os.Lstat(info.Path); !os.IsNotExist(err) {
				t.Errorf("damaged blob still at final path: %v", err)
			}
			if q := testutil.DirNames(t, filepath.Join(s.Root(), dirQuarantine)); len(q) != 2 {
				t.Errorf("quarantine: %v, want file and note", q)
			}
			// The caller fetches again: a fresh commit restores it.
			if again := commit(t, s, data); again != info {
				t.Errorf("recommit = %+v, want %+v", again, info)
			}
			if _, err := s.Lookup(ctx, testutil.SHA256Of(data)); err != nil {
				t.Errorf("Lookup after recommit: %v", err)
			}
		})
	}
}

func mustLstat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func TestLookupNotFound(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := testutil.Fill("present", 10)
	commit(t, s, data)
	absent := testutil.Fill("absent", 10)
	for _, d := range []digest.Digest{testutil.SHA256Of(absent), testutil.SHA512Of(absent), testutil.SHA512Of(data)} {
		if _, err := s.Lookup(ctx, d); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup(%v) = %v, want ErrNotFound", d, err)
		}
	}
	// A damaged alias is treated as absent, not followed.
	alias := s.aliasPath(testutil.SHA512Of(absent))
	if err := os.WriteFile(alias, []byte("../../../etc/passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, testutil.SHA512Of(absent)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup via damaged alias = %v, want ErrNotFound", err)
	}
}

func TestConcurrentCommitSameDigest(t *testing.T) {
	const goroutines, procs, perProc = 6, 2, 3
	s := newStore(t)
	data := testutil.Fill("race", 1<<20)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []digest.Digest{testutil.SHA256Of(data), testutil.SHA512Of(data)} {
		t.Run(string(d.Algorithm), func(t *testing.T) {
			ctx := context.Background()
			var cmds []*exec.Cmd
			for range procs {
				cmd := startHelper(t, "commit", envRoot+"="+s.Root(), envDigest+"="+d.String(),
					envSource+"="+src, fmt.Sprintf("%s=%d", envN, perProc))
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				cmds = append(cmds, cmd)
			}
			var wg sync.WaitGroup
			errs := make(chan error, goroutines)
			for i := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- commitCopy(ctx, s, d, src, fmt.Sprintf("g%d", i))
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			for _, c := range cmds {
				if err := c.Wait(); err != nil {
					t.Errorf("child: %v", err)
				}
			}
			if got := testutil.DirNames(t, filepath.Join(s.Root(), dirBlobs, "sha256")); len(got) != 1 || got[0] != testutil.SHA256Of(data).Hex {
				t.Errorf("blobs: %v, want exactly %s", got, testutil.SHA256Of(data).Hex)
			}
			for _, dir := range []string{dirIngest, dirQuarantine, filepath.Join(dirStamps, "blobs"), filepath.Join(dirIndex, "sha512")} {
				for _, n := range testutil.DirNames(t, filepath.Join(s.Root(), dir)) {
					if dir == dirIngest || atomicfile.IsTemp(n) || dir == dirQuarantine {
						t.Errorf("left in %s: %s", dir, n)
					}
				}
			}
			if _, err := s.Lookup(ctx, d); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestSingleDownloadAcrossProcesses follows the download protocol (Lookup,
// Lock, Lookup, fetch, Commit) from goroutines and two other processes
// against a real HTTP server: exactly one download happens.
func TestSingleDownloadAcrossProcesses(t *testing.T) {
	data := testutil.Fill("download", 512<<10)
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write(data)
	}))
	defer srv.Close()
	s := newStore(t)
	d := testutil.SHA512Of(data)
	ctx := context.Background()
	var cmds []*exec.Cmd
	for range 2 {
		cmd := startHelper(t, "fetch", envRoot+"="+s.Root(), envDigest+"="+d.String(), envSource+"="+srv.URL, envN+"=3")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := fetchOnce(ctx, s, d, srv.URL); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("child: %v", err)
		}
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("%d downloads, want 1", n)
	}
	if _, err := s.Lookup(ctx, d); err != nil {
		t.Error(err)
	}
}

// A cancelled commit is not a verification failure: the ingest file stays
// (the download can resume) and nothing is quarantined.
func TestCommitCancelled(t *testing.T) {
	s := newStore(t)
	data := testutil.Fill("cancel", 3<<20)
	d := testutil.SHA256Of(data)
	p := ingest(t, s, d, data)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Commit(ctx, p, d, int64(len(data))); !errors.Is(err, context.Canceled) || errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Commit with cancelled ctx = %v", err)
	}
	if !testutil.Exists(p) || len(testutil.DirNames(t, filepath.Join(s.Root(), dirQuarantine))) != 0 {
		t.Error("cancelled commit lost or quarantined the ingest file")
	}
	if _, err := s.Commit(context.Background(), p, d, int64(len(data))); err != nil {
		t.Errorf("commit after cancel: %v", err)
	}
}
