package atomicfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// leftovers lists the temporary names left in dir.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if IsTemp(de.Name()) {
			out = append(out, de.Name())
		}
	}
	return out
}

func TestWritePublishes(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "record.json")
	var tmpName string
	err := Write(dst, 0o444, func(f *os.File) error {
		tmpName = f.Name()
		if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("destination exists while being written: %v", err)
		}
		_, err := f.WriteString("{}\n")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !IsTemp(filepath.Base(tmpName)) || !strings.HasPrefix(filepath.Base(tmpName), TempPrefix("record.json")) || filepath.Dir(tmpName) != dir {
		t.Errorf("temporary name %q is not a temporary name in the destination directory", tmpName)
	}
	got, err := os.ReadFile(dst)
	if err != nil || string(got) != "{}\n" {
		t.Fatalf("published %q, %v", got, err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o444 {
		t.Errorf("mode %v, want 0444", fi.Mode().Perm())
	}
	if l := leftovers(t, dir); len(l) > 0 {
		t.Errorf("temporary files left: %v", l)
	}
}

func TestWriteFailureLeavesDestination(t *testing.T) {
	boom := errors.New("producer failed")
	tests := []struct {
		name  string
		write func(*os.File) error
		want  error
	}{
		{"producer error", func(f *os.File) error {
			_, _ = f.WriteString("half")
			return boom
		}, boom},
		{"file closed by producer", func(f *os.File) error {
			_, _ = f.WriteString("half")
			return f.Close() // the chmod after it fails
		}, os.ErrClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "f")
			if err := os.WriteFile(dst, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			err := Write(dst, 0o644, tc.write)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Write = %v, want %v", err, tc.want)
			}
			if got, _ := os.ReadFile(dst); string(got) != "old" {
				t.Errorf("destination changed to %q", got)
			}
			if l := leftovers(t, dir); len(l) > 0 {
				t.Errorf("temporary files left: %v", l)
			}
		})
	}
}

func TestWriteNamesPathOnError(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "missing-dir", "f")
	err := WriteFile(dst, []byte("x"), 0o644)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(dst)) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("WriteFile into a missing directory = %v, want an error naming %s", err, dst)
	}
}

// TestWriteReplaceIsAtomic replaces a file over and over while readers read
// it: every read sees one whole version, never a mix or nothing.
func TestWriteReplaceIsAtomic(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "f")
	versions := [][]byte{bytes.Repeat([]byte("a"), 64<<10), bytes.Repeat([]byte("b"), 96<<10)}
	if err := WriteFile(dst, versions[0], 0o644); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := os.ReadFile(dst)
				if err != nil {
					t.Errorf("read during replace: %v", err)
					return
				}
				if !bytes.Equal(got, versions[0]) && !bytes.Equal(got, versions[1]) {
					t.Errorf("read %d bytes that are neither version", len(got))
					return
				}
			}
		}()
	}
	for i := range 200 {
		if err := WriteFile(dst, versions[i%2], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestSymlinkReplaces(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "current")
	for _, target := range []string{"v1", "v2"} {
		if err := Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		got, err := os.Readlink(link)
		if err != nil || got != target {
			t.Fatalf("link points at %q (%v), want %q", got, err, target)
		}
	}
	if l := leftovers(t, dir); len(l) > 0 {
		t.Errorf("temporary links left: %v", l)
	}
}

func TestSymlinkOverDirectoryFails(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "current")
	if err := os.Mkdir(link, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(link, "keep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Symlink("v1", link); err == nil {
		t.Fatal("Symlink replaced a non-empty directory")
	}
	if l := leftovers(t, dir); len(l) > 0 {
		t.Errorf("temporary links left after a failed rename: %v", l)
	}
}

func TestSyncDir(t *testing.T) {
	if err := SyncDir(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "nope")
	if err := SyncDir(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("SyncDir(missing) = %v, want ErrNotExist", err)
	}
}

func TestPublish(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "disk.raw")
	mk := func(content string, mode os.FileMode) string {
		t.Helper()
		tmp := TempName(dst)
		if !IsTemp(filepath.Base(tmp)) || filepath.Dir(tmp) != dir {
			t.Fatalf("TempName %q is not a temporary name beside %s", tmp, dst)
		}
		if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return tmp
	}
	// A read-only temporary (as clonefile leaves it) is published with perm.
	if err := Publish(mk("one", 0o444), dst, 0o644, false); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("published %v, %v", fi, err)
	}
	// Without replace an existing destination is kept, and the temporary goes.
	tmp := mk("two", 0o600)
	if err := Publish(tmp, dst, 0o644, false); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), dst) {
		t.Fatalf("publish over an existing file: %v", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "one" {
		t.Fatalf("destination overwritten: %q", b)
	}
	if err := Publish(mk("three", 0o600), dst, 0o600, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "three" {
		t.Fatalf("replace: %q", b)
	}
	if left := leftovers(t, dir); len(left) != 0 {
		t.Fatalf("temporaries left: %v", left)
	}
}
