package pipeline_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/kerneltest"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/download"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/resolve"
	"github.com/vmprep/vmprep/pkg/stage"
	"github.com/vmprep/vmprep/pkg/store"
	"golang.org/x/sys/unix"
)

// republish serves data as the asset role of ubuntu 24.04 arch, with its
// digest in the signed manifest: the mirror publishes exactly these bytes.
func republish(t *testing.T, m *testmirror.Mirror, arch catalog.Arch, role catalog.Role, data []byte) {
	t.Helper()
	rel := m.Path("ubuntu", "24.04", arch, role)
	old := m.Digest(rel).Hex
	m.Put(rel, data)
	repl := m.Digest(rel).Hex
	m.EditManifest(m.ManifestPath("ubuntu", "24.04", arch, role), func(text []byte) []byte {
		if !bytes.Contains(text, []byte(old)) {
			t.Fatalf("manifest does not list %s", rel)
		}
		return bytes.ReplaceAll(text, []byte(old), []byte(repl))
	})
}

// qemuTool runs qemu-img or qemu-io.
func qemuTool(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestPermanentFailuresEndAtOnce: failures that no retry can fix end the
// request on their first delivery, with a cause that says what is wrong,
// instead of being retried for minutes (deliveries × download attempts).
func TestPermanentFailuresEndAtOnce(t *testing.T) {
	t.Parallel()
	amd := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	tests := []struct {
		name      string
		format    catalog.DiskFormat
		setup     func(t *testing.T, e *env, m *testmirror.Mirror)
		wantStage string
		wantCause []string
		// mayPrepare: the outcome depends on the file system; preparing is
		// right where it can hold the file.
		mayPrepare bool
	}{
		{
			name: "disk redirected to file://", format: catalog.FormatQCOW2,
			setup: func(t *testing.T, e *env, m *testmirror.Mirror) {
				disk := "/" + m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
				front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == disk {
						http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
						return
					}
					m.ServeHTTP(w, r)
				}))
				t.Cleanup(front.Close)
				cat, err := catalog.New(catalog.WithMirror(front.URL+"/"), catalog.WithKeyring(m.Keyring()))
				if err != nil {
					t.Fatal(err)
				}
				e.deps.Resolver = resolve.New(cat, resolve.WithLogger(quietLogger()))
			},
			wantStage: messages.StageFetcher, wantCause: []string{"file:///etc/passwd", "unsupported URL scheme"},
		},
		{
			name: "body shorter than Content-Length, no Range support", format: catalog.FormatQCOW2,
			setup: func(t *testing.T, e *env, m *testmirror.Mirror) {
				m.SetFault(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk), testmirror.Fault{IgnoreRange: true, Reset: true, After: 1 << 20})
			},
			wantStage: messages.StageFetcher, wantCause: []string{"unexpected EOF", "cannot resume"},
		},
		{
			name: "declared qcow2 with a broken magic, qcow2 wanted", format: catalog.FormatQCOW2,
			setup:     breakDiskMagic,
			wantStage: messages.StageVerifier, wantCause: []string{"declared qcow2", "no qcow2 magic"},
		},
		{
			name: "declared qcow2 with a broken magic, raw wanted", format: catalog.FormatRaw,
			setup:     breakDiskMagic,
			wantStage: messages.StageVerifier, wantCause: []string{"declared qcow2", "no qcow2 magic"},
		},
		{
			name: "1 PiB virtual disk as raw", format: catalog.FormatRaw,
			setup: func(t *testing.T, e *env, m *testmirror.Mirror) {
				img := filepath.Join(t.TempDir(), "huge.qcow2")
				qemuTool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1P")
				qemuTool(t, "qemu-io", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x33 1T 1M", img)
				b, err := os.ReadFile(img)
				if err != nil {
					t.Fatal(err)
				}
				republish(t, m, catalog.ArchAMD64, catalog.RoleDisk, b)
			},
			wantStage: messages.StageConverter, wantCause: []string{"larger than the file system", "file too large"},
			mayPrepare: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
			e := newEnv(t, m)
			tt.setup(t, e, m)
			emb := e.start(t)
			res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "permanent", Spec: amd, Format: tt.format})
			if tt.mayPrepare && res.Status == messages.ResultPrepared {
				t.Logf("prepared: this file system holds the file")
				return
			}
			f := res.Failure
			if res.Status != messages.ResultFailed || f == nil {
				t.Fatalf("status %s, want failed", res.Status)
			}
			if f.Retryable || strings.HasPrefix(f.Cause, "gave up after") {
				t.Errorf("failure %+v was retried or is called retryable; want permanent at once", f)
			}
			if f.Stage != tt.wantStage || f.Asset != catalog.RoleDisk {
				t.Errorf("failed in %s for %s, want %s for the disk (%s)", f.Stage, f.Asset, tt.wantStage, f.Cause)
			}
			for _, w := range tt.wantCause {
				if !strings.Contains(f.Cause, w) {
					t.Errorf("cause %q does not say %q", f.Cause, w)
				}
			}
		})
	}
}

// breakDiskMagic publishes the amd64 disk with one byte of its qcow2 magic
// lost: format detection alone would take it for raw data.
func breakDiskMagic(t *testing.T, e *env, m *testmirror.Mirror) {
	t.Helper()
	b := bytes.Clone(m.Content(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)))
	b[3] = 0 // "QFI\xfb" -> "QFI\x00"
	republish(t, m, catalog.ArchAMD64, catalog.RoleDisk, b)
}

// TestShortBodyIsFetchedOnce: the permanent short-body failure costs one
// delivery's attempts, not MaxDeliver times as many.
func TestShortBodyIsFetchedOnce(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	disk := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	m.SetFault(disk, testmirror.Fault{IgnoreRange: true, Reset: true, After: 1 << 20})
	e := newEnv(t, m) // its downloader makes 4 attempts
	emb := e.start(t)
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "short", Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}, Format: catalog.FormatQCOW2})
	if res.Status != messages.ResultFailed {
		t.Fatalf("status %s, want failed", res.Status)
	}
	if n := m.Requests(disk); n != 4 {
		t.Errorf("the disk was requested %d times, want the 4 attempts of one delivery", n)
	}
}

// TestRawConversionNeedsRoomForDataOnly: the free-space check before a raw
// conversion counts the qcow2's allocated data (plus a margin), not the
// virtual size: a 64 GiB disk holding 24 MiB converts where 8 GiB are free.
func TestRawConversionNeedsRoomForDataOnly(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithDiskSize(64<<30, 24<<20), testmirror.WithCompressedDisk(false))
	e := newEnv(t, m)
	var fs unix.Statfs_t
	if err := unix.Statfs(e.cache, &fs); err != nil {
		t.Fatal(err)
	}
	avail := int64(fs.Bavail) * int64(fs.Bsize)
	if avail < 9<<30 {
		t.Skipf("%d bytes free: too little to leave 8 GiB for the test", avail)
	}
	// Leave 8 GiB usable: far more than the data, far less than the virtual
	// size, so other writers on this file system cannot change the outcome.
	st, err := store.Open(e.cache, store.WithMinFree(avail-8<<30))
	if err != nil {
		t.Fatal(err)
	}
	e.deps.Store = st
	emb := e.start(t)
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "roomy", Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}, Format: catalog.FormatRaw})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("status %s: %+v", res.Status, res.Failure)
	}
	if fi, err := os.Stat(res.Disk); err != nil || fi.Size() != 64<<30 {
		t.Errorf("raw disk %s: %v, size %d; want 64 GiB", res.Disk, err, fi.Size())
	}
}

// TestZBootKernelIsUnpacked: an EFI zboot kernel (Fedora's arm64 vmlinuz,
// Ubuntu's with CONFIG_EFI_ZBOOT) goes to the converter like a gzip one and
// is delivered as the raw Image, derived from the verified vmlinuz.
func TestZBootKernelIsUnpacked(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchARM64))
	image := kerneltest.Arm64Image(2 << 20)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(image); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	republish(t, m, catalog.ArchARM64, catalog.RoleKernel, kerneltest.ZBoot("gzip", gz.Bytes(), len(image)))
	e := newEnv(t, m)
	emb := e.start(t)
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchARM64}
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "zboot", Spec: spec, Format: catalog.FormatQCOW2})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("status %s: %+v", res.Status, res.Failure)
	}
	got, err := os.ReadFile(res.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, image) {
		t.Errorf("kernel %s (%d bytes) is not the Image inside the zboot vmlinuz (%d bytes)", res.Kernel, len(got), len(image))
	}
	kernelRel := m.Path("ubuntu", "24.04", catalog.ArchARM64, catalog.RoleKernel)
	if f := res.Files[catalog.RoleKernel]; f.DerivedFrom != m.Digest(kernelRel) {
		t.Errorf("kernel derived_from %s, want %s", f.DerivedFrom, m.Digest(kernelRel))
	}
	if target, err := filepath.EvalSymlinks(filepath.Join(res.View, "vmlinux")); err != nil || target != res.Kernel {
		t.Errorf("view vmlinux -> %s (%v), want %s", target, err, res.Kernel)
	}
}

// TestGivingUpNamesWhatWasRetried: a client whose context ends (vmprep
// prepare --timeout) while the fetcher retries says what it was retrying,
// not only "context canceled".
func TestGivingUpNamesWhatWasRetried(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	m.SetFault(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk), testmirror.Fault{Status: http.StatusServiceUnavailable})
	e := newEnv(t, m)
	// Retry for a minute: only the client's context ends this request.
	e.deps.Downloader = download.New(download.WithLogger(quietLogger()), download.WithBackoff(20*time.Millisecond, 100*time.Millisecond), download.WithRetry(1000, time.Minute))
	e.deps.RunnerOptions = append(e.deps.RunnerOptions, stage.WithDrainTimeout(100*time.Millisecond)) // the retrying fetch is then cut at shutdown
	emb := e.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a bound only if no retry is ever reported
	defer cancel()
	_, err := testutil.Prepare(ctx, emb.Conn, messages.PrepareRequest{RequestID: "impatient", Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}, Format: catalog.FormatQCOW2},
		func(p messages.Progress) {
			if p.Retrying != "" {
				cancel() // the client gives up once a retry is under way
			}
		})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "last error: fetcher, disk") || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("error %q does not say what the fetcher was retrying", err)
	}
}
