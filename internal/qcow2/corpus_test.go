package qcow2

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmprep/vmprep/internal/testutil"
)

const corpusDir = "../../testdata/qcow2"

type corpusCase struct{ name, sha string }

func loadExpected(t *testing.T) []corpusCase {
	t.Helper()
	f, err := os.Open(filepath.Join(corpusDir, "expected.sha256"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []corpusCase
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			t.Fatalf("bad expected.sha256 line %q", sc.Text())
		}
		cases = append(cases, corpusCase{name: fields[1], sha: fields[0]})
	}
	if len(cases) == 0 {
		t.Fatal("empty expected.sha256")
	}
	return cases
}

// allocatedBytes is what du counts: allocated 512-byte blocks.
// The file is fsynced first: with delayed allocation ext4 counts an extent
// tree block only once the data is written back.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("directory %s holds %v, want %v", dir, got, names)
	}
}

func TestConvertCorpus(t *testing.T) {
	qemuImg, _ := exec.LookPath("qemu-img")
	if qemuImg == "" {
		t.Log("qemu-img not installed: digests checked, sparseness not compared with qemu-img's output")
	}
	for _, tc := range loadExpected(t) {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			src := filepath.Join(corpusDir, "valid", tc.name)
			dir := t.TempDir()
			dst := filepath.Join(dir, "out.raw")
			var last, total int64
			calls := 0
			stats, err := ConvertToRaw(context.Background(), src, dst, WithConcurrency(3), WithProgress(func(done, tot int64) {
				if done < last {
					t.Errorf("progress went backwards: %d after %d", done, last)
				}
				last, total = done, tot
				calls++
			}))
			if err != nil {
				t.Fatal(err)
			}
			if got := testutil.FileSHA256(t, dst); got != tc.sha {
				t.Fatalf("sha256 %s, want %s (qemu-img)", got, tc.sha)
			}
			if calls == 0 || last != total || total != stats.VirtualSize {
				t.Errorf("progress: %d calls, last %d/%d, virtual size %d", calls, last, total, stats.VirtualSize)
			}
			assertOnly(t, dir, "out.raw")
			if qemuImg == "" {
				return
			}
			ref := filepath.Join(dir, "qemu.raw")
			if out, err := exec.Command(qemuImg, "convert", "-f", "qcow2", "-O", "raw", src, ref).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img convert: %v\n%s", err, out)
			}
			if ours, theirs := allocatedBytes(t, dst), allocatedBytes(t, ref); ours > theirs {
				t.Errorf("output allocates %d bytes, qemu-img's %d", ours, theirs)
			}
		})
	}
}

func TestReadAtCorpus(t *testing.T) {
	for _, tc := range loadExpected(t) {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img, err := OpenFile(filepath.Join(corpusDir, "valid", tc.name))
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			h := sha256.New()
			// An odd buffer size exercises reads that straddle clusters.
			n, err := io.Copy(h, io.NewSectionReader(img, 0, img.Size()))
			if err != nil {
				t.Fatal(err)
			}
			if n != img.Size() {
				t.Fatalf("read %d bytes, virtual size %d", n, img.Size())
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != tc.sha {
				t.Fatalf("sha256 via ReadAt %s, want %s", got, tc.sha)
			}
		})
	}
}

func TestRefuseCorpus(t *testing.T) {
	tests := []struct {
		file    string
		want    error
		mention string
	}{
		{"backing.qcow2", ErrBackingFile, `"base.qcow2"`},
		{"luks.qcow2", ErrEncrypted, "LUKS"},
		{"aes.qcow2", ErrEncrypted, "AES"},
		{"datafile.qcow2", ErrExternalDataFile, `"external.raw"`},
		{"corrupt.qcow2", ErrCorruptBit, "corrupt"},
		{"unknown-incompat.qcow2", ErrUnknownFeature, "bits 5"},
		{"other.vmdk", ErrNotQcow2, "vmdk"},
		{"other.vhdx", ErrNotQcow2, "vhdx"},
		{"other.vdi", ErrNotQcow2, "vdi"},
		{"other.vpc", ErrNotQcow2, "vpc"},
		{"other.qed", ErrNotQcow2, "qed"},
		{"qcow1.qcow", ErrNotQcow2, "qcow image"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			src := filepath.Join(corpusDir, "refuse", tt.file)
			_, err := OpenFile(src)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open error %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
			dir := t.TempDir()
			dst := filepath.Join(dir, "out.raw")
			_, err = ConvertToRaw(context.Background(), src, dst)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), src) {
				t.Fatalf("ConvertToRaw error %v, want %v naming %s", err, tt.want, src)
			}
			assertOnly(t, dir)
		})
	}
}
