package content

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/testutil"
)

// runKilled runs a helper process that SIGKILLs itself at step and checks
// that it really died there (not earlier, not by finishing).
func runKilled(t *testing.T, mode, root, step string, env ...string) {
	t.Helper()
	cmd := startHelper(t, mode, append(env, envRoot+"="+root, envName+"="+step)...)
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != -1 {
		t.Fatalf("helper was not killed at %s: %v", step, err)
	}
}

// checkNoDebris fails if GC (which just ran) left temporaries or partials.
func checkNoDebris(t *testing.T, s *Store) {
	t.Helper()
	_ = filepath.WalkDir(s.Root(), func(p string, de fs.DirEntry, err error) error {
		if err == nil && !de.IsDir() && (atomicfile.IsTemp(de.Name()) || filepath.Dir(p) == s.path(dirIngest)) {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

// TestCommitKilledAtEveryStep kills a committing process at each step and
// checks that the next process copes: what is published is found (a
// published SHA-512 blob through its alias, without downloading again), what
// is not is ErrNotFound, committing again works, the ingest file is left
// writable for the download engine to resume, and GC clears the debris.
func TestCommitKilledAtEveryStep(t *testing.T) {
	data := testutil.Fill("killed commit", 300<<10)
	exp := testutil.SHA512Of(data)
	for _, step := range []string{"commit:verified", "commit:aliased", "commit:before-rename", "commit:renamed", "commit:sealed"} {
		t.Run(step, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t)
			src := filepath.Join(t.TempDir(), "src")
			if err := os.WriteFile(src, data, 0o644); err != nil {
				t.Fatal(err)
			}
			runKilled(t, "crashcommit", s.Root(), step, envDigest+"="+exp.String(), envSource+"="+src)

			published := testutil.Exists(s.blobPath(testutil.SHA256Of(data).Hex))
			info, err := s.Lookup(ctx, exp)
			switch {
			case err == nil:
				if b, rerr := os.ReadFile(info.Path); rerr != nil || !bytes.Equal(b, data) {
					t.Fatalf("Lookup after the kill returned wrong content (%v)", rerr)
				}
			case published:
				t.Fatalf("blob was published but Lookup(%s) = %v: it would be downloaded again", exp.Algorithm, err)
			case !errors.Is(err, ErrNotFound):
				t.Fatalf("Lookup after the kill = %v, want ErrNotFound", err)
			default:
				if fi, serr := os.Stat(s.IngestPath(exp)); serr == nil && fi.Mode().Perm()&0o200 == 0 {
					t.Errorf("killed commit left the ingest file read-only (%v): the download engine cannot resume it", fi.Mode())
				}
				if err := os.WriteFile(s.IngestPath(exp), data, 0o644); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Commit(ctx, s.IngestPath(exp), exp, int64(len(data))); err != nil {
					t.Fatalf("commit after the kill: %v", err)
				}
			}
			if _, err := s.Lookup(ctx, exp); err != nil {
				t.Fatal(err)
			}
			before := s.hashedBytes.Load()
			if _, err := s.Lookup(ctx, exp); err != nil {
				t.Fatal(err)
			}
			if n := s.hashedBytes.Load() - before; n != 0 {
				t.Errorf("warm Lookup after recovery hashed %d bytes", n)
			}
			if _, err := s.GC(ctx, GCOptions{MinAge: time.Hour, PartialMaxAge: time.Nanosecond}, noRefs{}); err != nil {
				t.Fatal(err)
			}
			checkNoDebris(t, s)
			if _, err := s.Lookup(ctx, exp); err != nil {
				t.Fatalf("after GC: %v", err)
			}
		})
	}
}

// TestPutDerivedKilledAtEveryStep kills a producing process mid-write and
// between publishing and sealing: the next Derived must not serve unsealed
// output, PutDerived must produce again, and GC clears the debris.
func TestPutDerivedKilledAtEveryStep(t *testing.T) {
	want := testutil.Fill("derived", 10000) // what the helper's producer writes
	for _, step := range []string{"derive:mid-produce", "derive:produced"} {
		t.Run(step, func(t *testing.T) {
			ctx := context.Background()
			s := newStore(t)
			src := commit(t, s, testutil.Fill("source", 1000))
			runKilled(t, "crashderive", s.Root(), step, envDigest+"="+src.SHA256.String())
			k := DerivedKey{Source: src.SHA256, Converter: "c-1", Format: "raw"}
			if _, err := s.Derived(ctx, k); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Derived after a killed producer = %v, want ErrNotFound", err)
			}
			p, err := s.PutDerived(ctx, k, func(ctx context.Context, dst string) error {
				return WriteAtomic(dst, 0o644, func(f *os.File) error { _, err := f.Write(want); return err })
			})
			if err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, want) {
				t.Fatalf("derived content after recovery wrong (%v)", err)
			}
			if _, err := s.GC(ctx, GCOptions{MinAge: time.Hour, PartialMaxAge: time.Nanosecond}, noRefs{}); err != nil {
				t.Fatal(err)
			}
			checkNoDebris(t, s)
		})
	}
}

// TestCommitOverDebris: whatever occupies a blob's final path that is not a
// regular file (a directory, a symlink) must not block commits forever.
func TestCommitOverDebris(t *testing.T) {
	data := testutil.Fill("debris", 5000)
	tests := []struct {
		name  string
		plant func(t *testing.T, p string)
	}{
		{"non-empty directory", func(t *testing.T, p string) {
			if err := os.MkdirAll(filepath.Join(p, "inner"), 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink", func(t *testing.T, p string) {
			if err := os.Symlink(t.TempDir(), p); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			tc.plant(t, s.blobPath(testutil.SHA256Of(data).Hex))
			info := commit(t, s, data)
			if b, err := os.ReadFile(info.Path); err != nil || !bytes.Equal(b, data) {
				t.Fatalf("blob after commit over debris: %v", err)
			}
		})
	}
}

// derivedTemps lists the temporary files of key k in derived/.
func derivedTemps(t *testing.T, s *Store, k DerivedKey) []string {
	t.Helper()
	name, err := k.fileName()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range testutil.DirNames(t, s.path(dirDerived)) {
		if strings.HasPrefix(n, atomicfile.TempPrefix(name)) {
			out = append(out, n)
		}
	}
	return out
}

// TestPutDerivedRemovesKilledProducersTemp: the temporary file of a
// producer killed mid-write (a multi-GiB raw disk, say) is removed when the
// next producer of the same key starts, not left for GC; another key's
// temporary file is not touched.
func TestPutDerivedRemovesKilledProducersTemp(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	src := commit(t, s, testutil.Fill("source", 1000))
	k := DerivedKey{Source: src.SHA256, Converter: "c-1", Format: "raw"}
	runKilled(t, "crashderive", s.Root(), "derive:mid-produce", envDigest+"="+src.SHA256.String())
	if left := derivedTemps(t, s, k); len(left) != 1 {
		t.Fatalf("the killed producer left %v, want one temporary file", left)
	}
	other := DerivedKey{Source: src.SHA256, Converter: "c-2", Format: "raw"}
	otherName, err := other.fileName()
	if err != nil {
		t.Fatal(err)
	}
	otherTemp := filepath.Join(s.path(dirDerived), atomicfile.TempPrefix(otherName)+"123")
	if err := os.WriteFile(otherTemp, []byte("another key at work"), 0o644); err != nil {
		t.Fatal(err)
	}
	var atStart []string
	if _, err := s.PutDerived(ctx, k, func(ctx context.Context, dst string) error {
		atStart = derivedTemps(t, s, k)
		return WriteAtomic(dst, 0o644, func(f *os.File) error { _, err := f.Write([]byte("raw")); return err })
	}); err != nil {
		t.Fatal(err)
	}
	if len(atStart) != 0 {
		t.Errorf("the next producer started beside the killed one's %v", atStart)
	}
	if _, err := os.Stat(otherTemp); err != nil {
		t.Errorf("another key's temporary file was removed: %v", err)
	}
}

// TestPutDerivedKeepsLiveProducersTemp: a producer of the same key in
// another process, still writing, keeps its temporary file: the next
// producer waits for the key's lock before it removes anything.
func TestPutDerivedKeepsLiveProducersTemp(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	src := commit(t, s, testutil.Fill("source", 1000))
	k := DerivedKey{Source: src.SHA256, Converter: "c-1", Format: "raw"}
	child := startHelper(t, "slowderive", envRoot+"="+s.Root(), envDigest+"="+src.SHA256.String())
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = child.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "producing\n" {
		t.Fatalf("child did not start producing: %q %v", line, err)
	}

	locking := make(chan struct{})
	var once sync.Once
	s.crashPoint = func(step string) {
		if step == "derive:locking" {
			once.Do(func() { close(locking) })
		}
	}
	type result struct {
		path string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		p, err := s.PutDerived(ctx, k, func(context.Context, string) error {
			return errors.New("produced again although the other process did")
		})
		done <- result{p, err}
	}()
	<-locking // everything before the key's lock has run
	if left := derivedTemps(t, s, k); len(left) != 1 {
		t.Fatalf("the live producer's temporary file is gone: %v", left)
	}
	stdin.Close()
	if err := child.Wait(); err != nil {
		t.Fatalf("the live producer failed (its temporary file was removed?): %v", err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if b, err := os.ReadFile(r.path); err != nil || !bytes.Equal(b, testutil.Fill("derived", 10000)) {
		t.Errorf("derived content is not the other process's output (%v)", err)
	}
}
