package place

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/follow"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
)

// qemuQcow2 makes a qcow2 image with qemu-img from 8 MiB of guest data,
// half pseudo-random, half zeros and a repeated pattern.
func qemuQcow2(t *testing.T, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img is needed (apt-get install qemu-utils): %v", err)
	}
	dir := t.TempDir()
	guest := testutil.Fill("guest", 8<<20)
	clear(guest[2<<20 : 3<<20])
	for i := 5 << 20; i < 7<<20; i++ {
		guest[i] = byte(i % 7)
	}
	raw, img := filepath.Join(dir, "guest.raw"), filepath.Join(dir, "disk.qcow2")
	if err := os.WriteFile(raw, guest, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := append([]string{"convert", "-f", "raw", "-O", "qcow2"}, args...)
	if out, err := exec.Command("qemu-img", append(cmd, raw, img)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", cmd, err, out)
	}
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newPlacer(t *testing.T) *Placer {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &Placer{Store: st}
}

// download writes data into path as the download engine does, in chunks;
// after `pauseAt` bytes it waits until the conversion has started (its
// temporary output exists), so the rest arrives while it runs. then, if
// set, replaces the rest of the download.
type download struct {
	data    []byte
	pauseAt int
	then    func(f *os.File) error
	// awaitVerdict: pause until the conversion is complete and waits for
	// the verdict on its source, not just until it started.
	awaitVerdict <-chan struct{}
}

func (d download) run(t *testing.T, p *Placer, path string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		done <- func() error {
			f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			defer f.Close()
			const chunk = 256 << 10
			for off := 0; off < len(d.data); {
				if off == d.pauseAt && d.pauseAt > 0 {
					if d.awaitVerdict != nil {
						<-d.awaitVerdict
					} else if err := waitConverting(p); err != nil {
						return err
					}
					if d.then != nil {
						return d.then(f)
					}
				}
				end := min(off+chunk, len(d.data))
				if off < d.pauseAt {
					end = min(end, d.pauseAt)
				}
				if _, err := f.Write(d.data[off:end]); err != nil {
					return err
				}
				off = end
			}
			return nil
		}()
	}()
	return done
}

// waitConverting waits until a conversion's temporary output is in derived/.
func waitConverting(p *Placer) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if tmps := derivedTemps(p); len(tmps) > 0 {
			return nil
		}
		time.Sleep(time.Millisecond) // polling a directory: no event to wait on
	}
	return errors.New("no conversion started within a minute")
}

func derivedTemps(p *Placer) []string {
	ents, _ := os.ReadDir(filepath.Join(p.Store.Root(), "derived"))
	var out []string
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestRawDiskAheadConvertsWhileDownloading(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"plain", nil},
		{"zlib", []string{"-c"}},
		{"zstd", []string{"-c", "-o", "compression_type=zstd"}},
		{"4k clusters", []string{"-o", "cluster_size=4096"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			img := qemuQcow2(t, tt.args...)
			want := testutil.SHA256Of(img)
			p := newPlacer(t)
			ingest := p.Store.IngestPath(want)
			// The conversion starts before the ingest file exists, and the
			// download pauses half-way until it is converting.
			wrote := download{data: img, pauseAt: len(img) / 2}.run(t, p, ingest)
			got, err := p.RawDiskAhead(context.Background(), want, int64(len(img)), follow.Options{})
			if err != nil {
				t.Fatalf("RawDiskAhead: %v", err)
			}
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			src := filepath.Join(t.TempDir(), "disk.qcow2")
			if err := os.WriteFile(src, img, 0o644); err != nil {
				t.Fatal(err)
			}
			if sum, qemu := testutil.FileSHA256(t, got), testutil.QemuRawSHA256(t, src); sum != qemu {
				t.Fatalf("raw disk sha256 %s, qemu-img's %s", sum, qemu)
			}
			// The verifier commits the download; the normal conversion then
			// finds the result and converts nothing.
			before, err := os.Stat(got)
			if err != nil {
				t.Fatal(err)
			}
			blob, err := p.Store.Commit(context.Background(), ingest, want, int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			again, err := p.RawDisk(context.Background(), blob)
			if err != nil || again != got {
				t.Fatalf("RawDisk after RawDiskAhead: %q, %v; want %q", again, err, got)
			}
			if after, err := os.Stat(again); err != nil || !os.SameFile(before, after) {
				t.Fatalf("RawDisk converted again (%v)", err)
			}
			verifyStore(t, p)
		})
	}
}

// TestRawDiskAheadPublishesNothingUnverified: whatever goes wrong, nothing
// is published under the disk's key and no temporary output is left.
func TestRawDiskAheadPublishesNothingUnverified(t *testing.T) {
	img := qemuQcow2(t, "-c")
	other := qemuQcow2(t) // a valid image, but not the signed one
	// img and then bytes the conversion never reads (it may read a little
	// past the last compressed cluster): it is complete before the last
	// of them arrive, and must wait for them to be verified.
	withTail := append(append([]byte(nil), img...), testutil.Fill("tail", 256<<10)...)
	hostile := append([]byte(nil), img...)
	binary.BigEndian.PutUint64(hostile[40:], uint64(len(img))*4) // l1_table_offset past the end
	for _, tt := range []struct {
		name   string
		want   digest.Digest
		size   int64
		dl     download
		cancel bool // cancel the conversion once it runs
		// awaitVerdict: the download pauses at pauseAt until the conversion
		// is complete and waits for the verdict.
		awaitVerdict bool
		idle         time.Duration
		errIs        error
	}{
		{name: "other content", want: testutil.SHA256Of(img), size: int64(len(other)), dl: download{data: other}, errIs: follow.ErrDigestMismatch},
		{name: "other bytes after the converted part", want: testutil.SHA256Of(img), size: int64(len(withTail)),
			dl: download{data: withTail, pauseAt: len(img) + 128<<10}, awaitVerdict: true, errIs: follow.ErrDigestMismatch},
		{name: "truncated mid-way", want: testutil.SHA256Of(img), size: int64(len(img)),
			dl: download{data: img, pauseAt: len(img) / 2, then: func(f *os.File) error { return f.Truncate(0) }}, errIs: follow.ErrTruncated},
		{name: "cancelled", want: testutil.SHA256Of(img), size: int64(len(img)),
			dl: download{data: img, pauseAt: len(img) / 2, then: func(*os.File) error { return nil }}, cancel: true, errIs: context.Canceled},
		{name: "download stops", want: testutil.SHA256Of(img), size: int64(len(img)), idle: 100 * time.Millisecond,
			dl: download{data: img, pauseAt: len(img) / 2, then: func(*os.File) error { return nil }}, errIs: follow.ErrStalled},
		{name: "hostile header", want: testutil.SHA256Of(hostile), size: int64(len(hostile)), dl: download{data: hostile}, errIs: nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPlacer(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			returned := make(chan struct{})
			if tt.awaitVerdict {
				awaiting := make(chan struct{})
				testHookAwaitingVerdict = func() { close(awaiting) }
				t.Cleanup(func() { testHookAwaitingVerdict = nil })
				// Without a verdict to wait for, the conversion returns.
				either := make(chan struct{})
				go func() {
					select {
					case <-awaiting:
					case <-returned:
					}
					close(either)
				}()
				tt.dl.awaitVerdict = either
			}
			wrote := tt.dl.run(t, p, p.Store.IngestPath(tt.want))
			if tt.cancel {
				go func() {
					if waitConverting(p) == nil {
						cancel()
					}
				}()
			}
			_, err := p.RawDiskAhead(ctx, tt.want, tt.size, follow.Options{Idle: tt.idle})
			close(returned)
			if err == nil || (tt.errIs != nil && !errors.Is(err, tt.errIs)) {
				t.Fatalf("RawDiskAhead: %v, want %v", err, tt.errIs)
			}
			t.Logf("error: %v", err)
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			if _, err := p.Store.Derived(context.Background(), DerivedKeyOf(image.RoleDisk, tt.want)); !errors.Is(err, content.ErrNotFound) {
				t.Errorf("Derived after a failed RawDiskAhead: %v, want ErrNotFound", err)
			}
			if tmps := derivedTemps(p); len(tmps) > 0 {
				t.Errorf("temporary output left: %v", tmps)
			}
		})
	}
}

// TestRawDiskAheadBlobAlreadyCommitted: with the blob in the store (the
// download finished before the converter looked), it converts the blob.
func TestRawDiskAheadBlobAlreadyCommitted(t *testing.T) {
	img := qemuQcow2(t)
	want := testutil.SHA256Of(img)
	p := newPlacer(t)
	if err := os.WriteFile(p.Store.IngestPath(want), img, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Store.Commit(context.Background(), p.Store.IngestPath(want), want, int64(len(img))); err != nil {
		t.Fatal(err)
	}
	got, err := p.RawDiskAhead(context.Background(), want, int64(len(img)), follow.Options{Idle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "disk.qcow2")
	if err := os.WriteFile(src, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if sum, qemu := testutil.FileSHA256(t, got), testutil.QemuRawSHA256(t, src); sum != qemu {
		t.Fatalf("raw disk sha256 %s, qemu-img's %s", sum, qemu)
	}
}

// verifyStore re-hashes every file of p's store: the seal the conversion
// computed as it wrote must be the output's sparse digest.
func verifyStore(t *testing.T, p *Placer) {
	t.Helper()
	derived := 0
	err := p.Store.Verify(context.Background(), func(r content.VerifyResult) {
		if !r.OK {
			t.Errorf("verify %s: %v", r.Path, r.Err)
		}
		if r.SparseSHA256 != "" {
			derived++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if derived == 0 {
		t.Error("verify saw no derived file")
	}
}

// TestRawDiskSealsWhatItWrote: the digest the conversion computes as it
// writes is the one the store computes from the file.
func TestRawDiskSealsWhatItWrote(t *testing.T) {
	for _, args := range [][]string{nil, {"-c"}, {"-o", "cluster_size=4096"}, {"-c", "-o", "cluster_size=2M"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			img := qemuQcow2(t, args...)
			want := testutil.SHA256Of(img)
			p := newPlacer(t)
			if err := os.WriteFile(p.Store.IngestPath(want), img, 0o644); err != nil {
				t.Fatal(err)
			}
			blob, err := p.Store.Commit(context.Background(), p.Store.IngestPath(want), want, int64(len(img)))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.RawDisk(context.Background(), blob); err != nil {
				t.Fatal(err)
			}
			verifyStore(t, p)
		})
	}
}

// TestRawDiskAheadTakesThisProcessHash: while the download engine of this
// process writes the ingest file (Store.HashingHere), the follower hashes
// nothing and publishes on the engine's record (Store.RecordHashed) — and
// only if the file it holds is still the one recorded.
func TestRawDiskAheadTakesThisProcessHash(t *testing.T) {
	img := qemuQcow2(t)
	other := qemuQcow2(t, "-c") // a valid image that is not img
	want := testutil.SHA256Of(img)
	for _, tt := range []struct {
		name string
		data []byte // what the download writes
		// after runs once the file is complete and recorded as hashed.
		after  func(t *testing.T, path string)
		record bool
		errIs  error // nil: published
	}{
		// The record is believed, not checked: a (test-only) record that
		// lies about the bytes shows that the follower hashed none.
		{name: "recorded", data: other, record: true},
		{name: "rewritten after the record", data: img, record: true, errIs: errNoWord,
			after: func(t *testing.T, path string) {
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt([]byte{0xff}, int64(len(img)-1)); err != nil {
					t.Fatal(err)
				}
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				old := time.Now().Add(-time.Hour) // another mtime whatever the clock's tick
				if err := os.Chtimes(path, old, old); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "download ended without a record", data: img, errIs: errNoWord},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPlacer(t)
			ingest := p.Store.IngestPath(want)
			hashing := p.Store.HashingHere(ingest)
			defer hashing()
			// The download, its record and what follows it are done before
			// the follower looks, so that it sees only the end state; the
			// writer stops once the follower runs.
			if err := (download{data: tt.data}).runSync(ingest); err != nil {
				t.Fatal(err)
			}
			if tt.record {
				fi, err := os.Stat(ingest)
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Store.RecordHashed(ingest, fi, want, want); err != nil {
					t.Fatal(err)
				}
			}
			if tt.after != nil {
				tt.after(t, ingest)
			}
			returned := make(chan struct{})
			go func() {
				converting := make(chan struct{})
				go func() {
					if waitConverting(p) == nil {
						close(converting)
					}
				}()
				select {
				case <-converting:
				case <-returned:
				}
				hashing()
			}()
			// An hour: a follow that waits for a word that cannot come fails
			// the test by its timeout instead of passing as a stall.
			got, err := p.RawDiskAhead(context.Background(), want, int64(len(tt.data)), follow.Options{Idle: time.Hour})
			close(returned)
			if tt.errIs != nil {
				if !errors.Is(err, tt.errIs) {
					t.Fatalf("RawDiskAhead = %q, %v; want %v", got, err, tt.errIs)
				}
				if _, err := p.Store.Derived(context.Background(), DerivedKeyOf(image.RoleDisk, want)); !errors.Is(err, content.ErrNotFound) {
					t.Errorf("Derived after a failed RawDiskAhead: %v, want ErrNotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("RawDiskAhead: %v", err)
			}
		})
	}
}

// runSync writes all of d.data into path in chunks, as the download engine does.
func (d download) runSync(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	for off := 0; off < len(d.data); off += 256 << 10 {
		if _, err := f.Write(d.data[off:min(off+256<<10, len(d.data))]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
