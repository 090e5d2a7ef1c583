package content

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/digest"
)

// writeProducer returns a produce func that publishes b with WriteAtomic and
// counts its calls.
func writeProducer(b []byte, calls *atomic.Int64) func(context.Context, string) error {
	return func(ctx context.Context, dst string) error {
		calls.Add(1)
		return WriteAtomic(dst, 0o644, func(f *os.File) error {
			_, err := f.Write(b)
			return err
		})
	}
}

func TestPutDerivedSingleProducer(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	src := commit(t, s, testutil.Fill("qcow2", 4096))
	k := DerivedKey{Source: src.SHA256, Converter: "qcow2raw-1", Format: "raw"}
	out := testutil.Fill("raw", 1<<20)
	var calls atomic.Int64
	s2, err := Open(s.Root()) // a second worker on the same root
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	paths := make([]string, 8)
	for i := range paths {
		st := s
		if i%2 == 1 {
			st = s2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := st.PutDerived(ctx, k, writeProducer(out, &calls))
			if err != nil {
				t.Error(err)
			}
			paths[i] = p
		}()
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("producer ran %d times, want 1", n)
	}
	for _, p := range paths {
		if p != paths[0] {
			t.Errorf("paths differ: %v", paths)
			break
		}
	}
	if got, _ := os.ReadFile(paths[0]); !bytes.Equal(got, out) {
		t.Error("derived content differs")
	}
	if fi := mustLstat(t, paths[0]); fi.Mode().Perm() != 0o444 {
		t.Errorf("derived mode %v, want 0444", fi.Mode().Perm())
	}
	before := s.hashedBytes.Load()
	if p, err := s.Derived(ctx, k); err != nil || p != paths[0] {
		t.Errorf("Derived = %q, %v", p, err)
	}
	if n := s.hashedBytes.Load() - before; n != 0 {
		t.Errorf("warm Derived hashed %d bytes", n)
	}
	if left := testutil.DirNames(t, filepath.Join(s.Root(), dirDerived)); len(left) != 1 {
		t.Errorf("derived/: %v, want one file", left)
	}
}

func TestPutDerivedFailures(t *testing.T) {
	ctx := context.Background()
	src := digest.Digest{Algorithm: digest.SHA256, Hex: strings.Repeat("ab", 32)}
	boom := errors.New("converter exploded")
	tests := []struct {
		name    string
		produce func(ctx context.Context, dst string) error
		wantErr string
		wantIs  error
	}{
		{name: "error after partial write", produce: func(ctx context.Context, dst string) error {
			if err := os.WriteFile(dst, []byte("half"), 0o644); err != nil {
				return err
			}
			return boom
		}, wantIs: boom},
		{name: "success without output", produce: func(ctx context.Context, dst string) error { return nil }, wantErr: "missing"},
		{name: "directory instead of file", produce: func(ctx context.Context, dst string) error {
			return os.MkdirAll(filepath.Join(dst, "sub"), 0o755)
		}, wantErr: "left a directory at"},
		{name: "symlink instead of file", produce: func(ctx context.Context, dst string) error {
			return os.Symlink("/etc/passwd", dst)
		}, wantErr: "left a symbolic link at"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			k := DerivedKey{Source: src, Converter: "conv-2", Format: "raw"}
			_, err := s.PutDerived(ctx, k, tc.produce)
			if err == nil {
				t.Fatal("PutDerived succeeded")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("error %v does not wrap %v", err, tc.wantIs)
			}
			if tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
			if left := testutil.DirNames(t, filepath.Join(s.Root(), dirDerived)); len(left) != 0 {
				t.Errorf("left in derived/: %v", left)
			}
			// A later attempt produces normally.
			var calls atomic.Int64
			if _, err := s.PutDerived(ctx, k, writeProducer([]byte("ok"), &calls)); err != nil || calls.Load() != 1 {
				t.Errorf("retry: %v, %d calls", err, calls.Load())
			}
		})
	}
}

func TestDerivedDamaged(t *testing.T) {
	ctx := context.Background()
	out := testutil.Fill("raw-out", 200<<10)
	tests := []struct {
		name           string
		damage         func(t *testing.T, s *Store, path string)
		wantQuarantine bool
	}{
		{name: "byte flipped", damage: func(t *testing.T, s *Store, p string) { overwriteByte(t, p, 5) }, wantQuarantine: true},
		{name: "no stamp", damage: func(t *testing.T, s *Store, p string) {
			if err := os.Remove(s.derivedStampPath(filepath.Base(p))); err != nil {
				t.Fatal(err)
			}
		}, wantQuarantine: true},
		{name: "touched only", damage: func(t *testing.T, s *Store, p string) {
			if err := os.Chmod(p, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			k := DerivedKey{Source: testutil.SHA256Of([]byte("src")), Converter: "c-1", Format: "raw"}
			var calls atomic.Int64
			p, err := s.PutDerived(ctx, k, writeProducer(out, &calls))
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(t, s, p)
			got, err := s.Derived(ctx, k)
			if !tc.wantQuarantine {
				if err != nil || got != p {
					t.Fatalf("Derived = %q, %v", got, err)
				}
				return
			}
			if !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrQuarantined) {
				t.Fatalf("Derived = %q, %v; want ErrNotFound+ErrQuarantined", got, err)
			}
			if _, err := s.PutDerived(ctx, k, writeProducer(out, &calls)); err != nil || calls.Load() != 2 {
				t.Errorf("re-derive: %v, calls %d", err, calls.Load())
			}
		})
	}
}

func TestDerivedKeyNames(t *testing.T) {
	good := testutil.SHA256Of([]byte("x"))
	tests := []struct {
		k  DerivedKey
		ok bool
	}{
		{DerivedKey{Source: good, Converter: "qcow2raw-1.2", Format: "raw"}, true},
		{DerivedKey{Source: testutil.SHA512Of([]byte("x")), Converter: "c", Format: "raw"}, true},
		{DerivedKey{Source: good, Converter: "../../etc", Format: "raw"}, false},
		{DerivedKey{Source: good, Converter: "a/b", Format: "raw"}, false},
		{DerivedKey{Source: good, Converter: "c", Format: "r\x00w"}, false},
		{DerivedKey{Source: good, Converter: "a_b", Format: "raw"}, false},
		{DerivedKey{Source: good, Converter: "", Format: "raw"}, false},
		{DerivedKey{Source: good, Converter: "c", Format: ".."}, false},
		{DerivedKey{Source: digest.Digest{Algorithm: digest.SHA256, Hex: "../x"}, Converter: "c", Format: "raw"}, false},
		{DerivedKey{Converter: "c", Format: "raw"}, false},
		{DerivedKey{Source: good, Converter: strings.Repeat("c", 64), Format: strings.Repeat("f", 64)}, true},
		{DerivedKey{Source: testutil.SHA512Of([]byte("x")), Converter: strings.Repeat("c", 64), Format: strings.Repeat("f", 64)}, false},
	}
	s := newStore(t)
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q_%q", tc.k.Converter, tc.k.Format), func(t *testing.T) {
			name, err := tc.k.fileName()
			if (err == nil) != tc.ok {
				t.Fatalf("fileName(%+v) = %q, %v; want ok=%v", tc.k, name, err, tc.ok)
			}
			_, derr := s.Derived(context.Background(), tc.k)
			if !tc.ok {
				if !errors.Is(derr, ErrInvalidName) && !errors.Is(derr, digest.ErrInvalid) && !errors.Is(derr, digest.ErrUnsupportedAlgorithm) {
					t.Errorf("Derived(%+v) = %v, want a name error", tc.k, derr)
				}
				return
			}
			if !errors.Is(derr, ErrNotFound) {
				t.Errorf("Derived = %v, want ErrNotFound", derr)
			}
			back, ok := ParseDerivedName(name)
			if !ok || back != tc.k {
				t.Errorf("ParseDerivedName(%q) = %+v, %v", name, back, ok)
			}
		})
	}
}

func TestPutDerivedWaitHonoursContext(t *testing.T) {
	s := newStore(t)
	k := DerivedKey{Source: testutil.SHA256Of([]byte("src")), Converter: "c-1", Format: "raw"}
	name, err := k.fileName()
	if err != nil {
		t.Fatal(err)
	}
	unlock, _, err := s.lock(context.Background(), lockDerived, name, false) // a producer at work
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	var calls atomic.Int64
	if _, err := s.PutDerived(ctx, k, writeProducer([]byte("x"), &calls)); !errors.Is(err, context.DeadlineExceeded) || calls.Load() != 0 {
		t.Errorf("PutDerived while another produces = %v (%d calls), want DeadlineExceeded and no call", err, calls.Load())
	}
}
