package clone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/qcow2"
)

const mib = 1 << 20

// makeBase writes a sparse raw disk: 4 MiB of random data, a 24 MiB hole,
// 4 MiB of data, then a hole to 64 MiB; read-only like the cache's files.
func makeBase(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4*mib)
	for _, off := range []int64{0, 28 * mib} {
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(64 * mib); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// scribble overwrites 1 MiB at off in path, as a guest would.
func scribble(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xab}, mib), off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// samePrefix reports whether dest starts with base's bytes.
func samePrefix(t *testing.T, base, dest string) bool {
	t.Helper()
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	d, err := os.ReadFile(dest)
	if err != nil {
		t.Fatal(err)
	}
	return len(d) >= len(b) && bytes.Equal(d[:len(b)], b) && allZeroBytes(d[len(b):])
}

func allZeroBytes(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

func TestCloneOnFileSystems(t *testing.T) {
	for _, tc := range []struct {
		fs     string
		method Method
	}{
		{"xfs", MethodReflink},
		{"btrfs", MethodReflink},
		{"ext4", MethodCopy},
	} {
		t.Run(tc.fs, func(t *testing.T) {
			mnt := mountFS(t, tc.fs)
			ctx := context.Background()
			base := filepath.Join(mnt, "base.raw")
			makeBase(t, base)
			want := fileDigest(t, base)
			dest := filepath.Join(mnt, "vm1.raw")

			res, err := Clone(ctx, base, dest, Options{Size: 96 * mib})
			if err != nil {
				t.Fatal(err)
			}
			if res.Method != tc.method || res.Format != FormatRaw || res.Size != 96*mib || res.Path != dest || res.Base != base {
				t.Fatalf("result %+v, want method %s, raw, 96 MiB", res, tc.method)
			}
			if fi, err := os.Stat(dest); err != nil || fi.Size() != 96*mib || fi.Mode().Perm() != 0o644 {
				t.Fatalf("dest: %v, %v", fi, err)
			}
			if !samePrefix(t, base, dest) {
				t.Fatal("the clone's content differs from the base's")
			}
			shared, _ := sharedBytes(t, dest)
			if tc.method == MethodReflink && shared < 8*mib {
				t.Errorf("the clone shares %d bytes with its base, want its 8 MiB of data", shared)
			}
			if tc.method == MethodCopy {
				if shared != 0 {
					t.Errorf("a copy shares %d bytes", shared)
				}
				// Holes stay holes: 8 MiB of data, not 64.
				if a := allocated(t, dest); a > 12*mib {
					t.Errorf("the copy takes %d bytes on disk, want about 8 MiB", a)
				}
				if _, err := Clone(ctx, base, filepath.Join(mnt, "vm2.raw"), Options{RequireCOW: true}); !errors.Is(err, ErrNoCOW) {
					t.Errorf("RequireCOW on %s: %v, want ErrNoCOW", tc.fs, err)
				}
				if _, err := os.Stat(filepath.Join(mnt, "vm2.raw")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a refused clone left its destination: %v", err)
				}
			}
			scribble(t, dest, 1*mib)
			if got := fileDigest(t, base); got != want {
				t.Fatal("writing to the clone changed the base")
			}
			assertNoTemps(t, mnt)
		})
	}
}

func assertNoTemps(t *testing.T, dir string) {
	t.Helper()
	des, _ := os.ReadDir(dir)
	for _, de := range des {
		if atomicfile.IsTemp(de.Name()) {
			t.Errorf("temporary %s left behind", de.Name())
		}
	}
}

func TestCloneRefusals(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	base := filepath.Join(dir, "base.raw")
	makeBase(t, base)
	dest := filepath.Join(dir, "vm.raw")
	if err := os.WriteFile(dest, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		src  string
		dest string
		opts Options
		is   error
		says string
	}{
		{"exists", base, dest, Options{}, ErrExists, dest},
		{"exists overlay", base, dest, Options{Format: FormatQcow2}, ErrExists, dest},
		{"shrink", base, filepath.Join(dir, "a"), Options{Size: 32 * mib}, ErrShrink, base},
		{"shrink overlay", base, filepath.Join(dir, "b"), Options{Size: 1, Format: FormatQcow2}, ErrShrink, base},
		{"no base", filepath.Join(dir, "nope"), filepath.Join(dir, "c"), Options{}, os.ErrNotExist, "nope"},
		{"bad format", base, filepath.Join(dir, "d"), Options{Format: "vmdk"}, nil, "vmdk"},
		{"base itself", base, base, Options{Force: true}, nil, "base itself"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Clone(ctx, tc.src, tc.dest, tc.opts)
			if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err %v, want %v naming %q", err, tc.is, tc.says)
			}
		})
	}
	if b, _ := os.ReadFile(dest); string(b) != "precious" {
		t.Fatalf("refused clone changed the existing DEST: %q", b)
	}
	res, err := Clone(ctx, base, dest, Options{Force: true})
	if err != nil || !samePrefix(t, base, dest) {
		t.Fatalf("Force: %+v %v", res, err)
	}
	// A raw clone of a qcow2 base cannot be made by sharing blocks.
	q := filepath.Join(dir, "base.qcow2")
	qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", base, q)
	if _, err := Clone(ctx, q, filepath.Join(dir, "e"), Options{}); err == nil || !strings.Contains(err.Error(), "is qcow2") {
		t.Fatalf("raw clone of qcow2: %v", err)
	}
	assertNoTemps(t, dir)
}

// TestSparseCopyReadWrite runs the copy path of platforms without
// copy_file_range (macOS), and the kernel path, on this file system.
func TestSparseCopyReadWrite(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	makeBase(t, base)
	// An explicit run of zeros inside data is left a hole by read/write.
	f, _ := os.OpenFile(base, os.O_WRONLY, 0)
	if f == nil {
		os.Chmod(base, 0o644)
		f, _ = os.OpenFile(base, os.O_WRONLY, 0)
	}
	if _, err := f.WriteAt(make([]byte, 2*mib), 40*mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, kernel := range []bool{false, true} {
		src, err := os.Open(base)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "out")
		os.Remove(out)
		dst, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		var last, total int64
		err = sparseCopyWith(context.Background(), dst, src, func(d, t int64) { last, total = d, t }, kernel)
		src.Close()
		dst.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !samePrefix(t, base, out) || fileDigest(t, out) != fileDigest(t, base) {
			t.Fatalf("kernel=%v: copy differs", kernel)
		}
		if total != 64*mib || last == 0 || last > total {
			t.Errorf("kernel=%v: progress %d/%d", kernel, last, total)
		}
		if a := allocated(t, out); a > 12*mib {
			t.Errorf("kernel=%v: copy takes %d bytes, want about 8 MiB (holes kept)", kernel, a)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	src, _ := os.Open(base)
	defer src.Close()
	dst, _ := os.Create(filepath.Join(dir, "cancelled"))
	defer dst.Close()
	if err := sparseCopyWith(ctx, dst, src, nil, false); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v", err)
	}
}

func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestOverlayQemu(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed")
	}
	dir := t.TempDir()
	ctx := context.Background()
	raw := filepath.Join(dir, "base.raw")
	makeBase(t, raw)
	q := filepath.Join(dir, "base.qcow2")
	qemuImg(t, "convert", "-f", "raw", "-O", "qcow2", raw, q)
	if err := os.Chmod(q, 0o444); err != nil {
		t.Fatal(err)
	}
	// A link to the base, as images/ holds: the overlay names the target.
	link := filepath.Join(dir, "current")
	if err := os.Symlink("base.qcow2", link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		base, fmt string
		size      int64
	}{
		{raw, "raw", 0},
		{link, "qcow2", 100*mib + 1000},
		{q, "qcow2", 5 << 40}, // 5 TiB: an L1 table of more than one cluster
	} {
		t.Run(tc.fmt, func(t *testing.T) {
			dest := filepath.Join(dir, "vm-"+tc.fmt+".qcow2")
			os.Remove(dest)
			res, err := Clone(ctx, tc.base, dest, Options{Format: FormatQcow2, Size: tc.size})
			if err != nil {
				t.Fatal(err)
			}
			wantSize := max(tc.size, 64*mib)
			wantSize = (wantSize + 511) / 512 * 512
			realBase, _ := filepath.EvalSymlinks(tc.base)
			if res.Method != MethodOverlay || res.Format != FormatQcow2 || res.Base != realBase || res.Size != wantSize {
				t.Fatalf("result %+v", res)
			}
			var info struct {
				VirtualSize    int64  `json:"virtual-size"`
				Format         string `json:"format"`
				Backing        string `json:"full-backing-filename"`
				BackingFormat  string `json:"backing-filename-format"`
				FormatSpecific struct {
					Data struct {
						Corrupt bool `json:"corrupt"`
					} `json:"data"`
				} `json:"format-specific"`
			}
			if err := json.Unmarshal([]byte(qemuImg(t, "info", "--output=json", dest)), &info); err != nil {
				t.Fatal(err)
			}
			if info.Format != "qcow2" || info.VirtualSize != wantSize || info.Backing != realBase || info.BackingFormat != tc.fmt || info.FormatSpecific.Data.Corrupt {
				t.Fatalf("qemu-img info: %+v, want %d bytes backed by %s (%s)", info, wantSize, realBase, tc.fmt)
			}
			qemuImg(t, "check", dest)
			qemuImg(t, "compare", "-f", "qcow2", "-F", tc.fmt, dest, realBase)
			name, bf, ok, err := qcow2.Backing(mustOpen(t, dest))
			if err != nil || !ok || name != realBase || string(bf) != tc.fmt {
				t.Fatalf("Backing: %q %q %v %v", name, bf, ok, err)
			}
			before := fileDigest(t, realBase)
			out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 1M", dest).CombinedOutput()
			if err != nil {
				t.Fatalf("qemu-io: %v\n%s", err, out)
			}
			if fileDigest(t, realBase) != before {
				t.Fatal("writing through the overlay changed the base")
			}
			if out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", tc.fmt, dest, realBase).CombinedOutput(); err == nil {
				t.Fatalf("the overlay still equals its base after a write:\n%s", out)
			}
			qemuImg(t, "check", dest)
		})
	}
}

func mustOpen(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
