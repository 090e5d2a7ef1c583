package testmirror_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os/exec"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/signature"
)

func get(t *testing.T, url string, hdr map[string]string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func sum(alg digest.Algorithm, b []byte) digest.Digest {
	var h hash.Hash = sha256.New()
	if alg == digest.SHA512 {
		h = sha512.New()
	}
	h.Write(b)
	return digest.FromHash(alg, h)
}

func TestLayoutAndSignatures(t *testing.T) {
	m := testmirror.New(t, testmirror.WithDebian("12"), testmirror.WithFedora("41"))
	kr := m.Keyring()
	type asset struct {
		distro, version string
		arch            image.Arch
		role            image.Role
	}
	var assets []asset
	for _, a := range []image.Arch{image.ArchAMD64, image.ArchARM64} {
		assets = append(assets,
			asset{"ubuntu", "24.04", a, image.RoleDisk},
			asset{"ubuntu", "24.04", a, image.RoleKernel},
			asset{"ubuntu", "24.04", a, image.RoleInitramfs},
			asset{"debian", "12", a, image.RoleDisk},
			asset{"fedora", "41", a, image.RoleDisk},
		)
	}
	for _, tc := range assets {
		t.Run(fmt.Sprintf("%s-%s-%s-%s", tc.distro, tc.version, tc.arch, tc.role), func(t *testing.T) {
			p := m.Path(tc.distro, tc.version, tc.arch, tc.role)
			resp, body, err := get(t, m.FileURL(p), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %v %v", p, resp, err)
			}
			want := m.Digest(p)
			if got := sum(want.Algorithm, body); got != want {
				t.Fatalf("served digest %s, published %s", got, want)
			}
			switch {
			case tc.role == image.RoleDisk && !bytes.HasPrefix(body, []byte("QFI\xfb")):
				t.Fatalf("disk is not qcow2: % x", body[:8])
			case tc.role == image.RoleKernel && tc.arch == image.ArchARM64 && !bytes.HasPrefix(body, []byte{0x1f, 0x8b}):
				t.Fatalf("arm64 kernel is not gzip")
			}

			mp := m.ManifestPath(tc.distro, tc.version, tc.arch, tc.role)
			_, text, err := get(t, m.FileURL(mp), nil)
			if err != nil {
				t.Fatal(err)
			}
			switch tc.distro {
			case "ubuntu":
				_, sig, err := get(t, m.FileURL(mp+".gpg"), nil)
				if err != nil {
					t.Fatal(err)
				}
				s, err := kr.VerifyDetached(bytes.NewReader(text), sig)
				if err != nil || s.Fingerprint != m.Fingerprint() {
					t.Fatalf("detached signature: %v %v", s, err)
				}
			case "fedora":
				plain, s, err := kr.VerifyClearsigned(text)
				if err != nil || s.Fingerprint != m.Fingerprint() {
					t.Fatalf("clearsigned: %v %v", s, err)
				}
				text = plain
				wantSize := fmt.Sprintf("# %s: %d bytes", path.Base(p), len(body))
				if !strings.Contains(string(text), wantSize) {
					t.Fatalf("manifest lacks %q:\n%s", wantSize, text)
				}
			}
			if !strings.Contains(string(text), want.Hex) || !strings.Contains(string(text), path.Base(p)) {
				t.Fatalf("manifest %s does not list %s %s:\n%s", mp, path.Base(p), want, text)
			}
		})
	}
}

func TestDiskIsRealQCOW2(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(32<<20, 2<<20))
	p := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	out, err := exec.Command("qemu-img", "info", "--output=json", m.Dir+"/"+p).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info: %v: %s", err, out)
	}
	for _, want := range []string{`"format": "qcow2"`, fmt.Sprintf(`"virtual-size": %d`, 32<<20)} {
		if !strings.Contains(string(out), want) {
			t.Errorf("qemu-img info lacks %s:\n%s", want, out)
		}
	}
}

func TestRangesAndCounters(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	p := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleKernel)
	full := m.Content(p)
	resp, body, err := get(t, m.FileURL(p), nil)
	if err != nil {
		t.Fatal(err)
	}
	etag := resp.Header.Get("ETag")
	tests := []struct {
		name       string
		hdr        map[string]string
		wantStatus int
		wantBody   []byte
	}{
		{"range", map[string]string{"Range": "bytes=100-199"}, http.StatusPartialContent, full[100:200]},
		{"if-range match", map[string]string{"Range": "bytes=10-", "If-Range": etag}, http.StatusPartialContent, full[10:]},
		{"if-range stale", map[string]string{"Range": "bytes=10-", "If-Range": `"stale"`}, http.StatusOK, full},
		{"if-none-match", map[string]string{"If-None-Match": etag}, http.StatusNotModified, nil},
	}
	served := int64(len(body))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body, err := get(t, m.FileURL(p), tt.hdr)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.wantStatus || !bytes.Equal(body, tt.wantBody) {
				t.Fatalf("status %d, %d bytes; want %d, %d bytes", resp.StatusCode, len(body), tt.wantStatus, len(tt.wantBody))
			}
			served += int64(len(body))
		})
	}
	if got, want := m.Requests(p), 1+len(tests); got != want {
		t.Errorf("Requests = %d, want %d", got, want)
	}
	if got := m.BytesServed(p); got != served {
		t.Errorf("BytesServed = %d, want %d", got, served)
	}
	if got, want := m.TotalContentRequests(), 1+len(tests); got != want {
		t.Errorf("TotalContentRequests = %d, want %d", got, want)
	}
	if _, _, err := get(t, m.FileURL(m.ManifestPath("ubuntu", "24.04", image.ArchAMD64, image.RoleKernel)), nil); err != nil {
		t.Fatal(err)
	}
	if got, want := m.TotalContentRequests(), 1+len(tests); got != want {
		t.Errorf("manifest counted as content: TotalContentRequests = %d, want %d", got, want)
	}
}

func TestFaults(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	p := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleInitramfs)
	full := m.Content(p)
	tests := []struct {
		name  string
		fault testmirror.Fault
		hdr   map[string]string
		check func(t *testing.T, resp *http.Response, body []byte, err error)
	}{
		{"status", testmirror.Fault{Status: 503}, nil, func(t *testing.T, resp *http.Response, _ []byte, err error) {
			if err != nil || resp.StatusCode != 503 {
				t.Fatalf("got %v %v, want 503", resp, err)
			}
		}},
		{"reset", testmirror.Fault{Reset: true, After: 1000}, nil, func(t *testing.T, _ *http.Response, body []byte, err error) {
			if err == nil || len(body) != 1000 {
				t.Fatalf("got %d bytes, err %v; want 1000 bytes and an error", len(body), err)
			}
		}},
		{"ignore range", testmirror.Fault{IgnoreRange: true}, map[string]string{"Range": "bytes=5-"}, func(t *testing.T, resp *http.Response, body []byte, err error) {
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(body, full) {
				t.Fatalf("got %v, %d bytes, %v; want 200 with the whole file", resp.StatusCode, len(body), err)
			}
		}},
		{"wrong bytes", testmirror.Fault{WrongBytes: true}, nil, func(t *testing.T, resp *http.Response, body []byte, err error) {
			if err != nil || len(body) != len(full) || bytes.Equal(body, full) {
				t.Fatalf("got %d bytes (equal=%v), %v; want same length, different bytes", len(body), bytes.Equal(body, full), err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m.SetFault(p, tt.fault)
			defer m.ClearFault(p)
			resp, body, err := get(t, m.FileURL(p), tt.hdr)
			tt.check(t, resp, body, err)
		})
	}
}

func TestFaultTimes(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	p := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleKernel)
	m.SetFault(p, testmirror.Fault{Status: http.StatusServiceUnavailable, Times: 2})
	var codes []int
	for range 3 {
		resp, _, err := get(t, m.FileURL(p), nil)
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, resp.StatusCode)
	}
	if want := []int{503, 503, 200}; fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Fatalf("statuses %v, want %v", codes, want)
	}
}

func TestStallEndsWhenClientGivesUp(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	p := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleKernel)
	m.SetFault(p, testmirror.Fault{Stall: true, After: 4096})
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.FileURL(p), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadFull(resp.Body, make([]byte, 4096))
	if err != nil || got != 4096 {
		t.Fatalf("read %d bytes before the stall: %v", got, err)
	}
	cancel() // the stalled read must end once the client gives up
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: %v, want context.Canceled", err)
	}
}

func TestThrottleServesWholeFile(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithKernelSize(64<<10, 1024))
	p := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleKernel)
	m.Throttle(1 << 20)
	_, body, err := get(t, m.FileURL(p), nil)
	if err != nil || !bytes.Equal(body, m.Content(p)) {
		t.Fatalf("throttled body: %d bytes, %v", len(body), err)
	}
	// Cancellation interrupts a throttled body promptly.
	m.Throttle(1024)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.FileURL(p), nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatal("throttled read of 64 KiB at 1 KiB/s finished within the deadline")
		}
	}
}

func TestTamperEditRemove(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	kr := m.Keyring()
	disk := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	mp := m.ManifestPath("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)

	published := m.Digest(disk)
	m.Tamper(disk)
	if got := sum(digest.SHA256, m.Content(disk)); got == published {
		t.Fatal("Tamper left the disk's digest unchanged")
	}
	if m.Digest(disk) != published {
		t.Fatal("Tamper changed the published digest")
	}

	verify := func() error {
		_, text, err := get(t, m.FileURL(mp), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, sig, err := get(t, m.FileURL(mp+".gpg"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusNotFound {
			return signature.ErrNoSignature
		}
		_, err = kr.VerifyDetached(bytes.NewReader(text), sig)
		return err
	}
	m.Tamper(mp)
	if err := verify(); !errors.Is(err, signature.ErrBadSignature) {
		t.Fatalf("tampered manifest verified: %v", err)
	}
	m.EditManifest(mp, func(text []byte) []byte {
		var keep []string
		for _, l := range strings.SplitAfter(string(text), "\n") {
			if !strings.HasSuffix(strings.TrimSpace(l), ".img") {
				keep = append(keep, l)
			}
		}
		return []byte(strings.Join(keep, ""))
	})
	if err := verify(); err != nil {
		t.Fatalf("edited manifest does not verify: %v", err)
	}
	if strings.Contains(string(m.Content(mp)), path.Base(disk)) {
		t.Fatal("edit did not drop the disk entry")
	}
	m.Remove(mp + ".gpg")
	if err := verify(); !errors.Is(err, signature.ErrNoSignature) {
		t.Fatalf("removed signature still served: %v", err)
	}
}

func TestDirectoryIndex(t *testing.T) {
	m := testmirror.New(t, testmirror.WithUbuntu(), testmirror.WithFedora("41"), testmirror.WithArches(image.ArchARM64))
	disk := m.Path("fedora", "41", image.ArchARM64, image.RoleDisk)
	resp, body, err := get(t, m.FileURL(path.Dir(disk)+"/"), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("index: %v %v", resp, err)
	}
	for _, name := range []string{path.Base(disk), path.Base(m.ManifestPath("fedora", "41", image.ArchARM64, image.RoleDisk))} {
		if !strings.Contains(string(body), `href="`+name+`"`) {
			t.Errorf("index lacks %s:\n%s", name, body)
		}
	}
	resp, _, err = get(t, m.FileURL("pub/nothing/"), nil)
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing dir: %v %v", resp, err)
	}
}

func TestKeyringFile(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	kr, err := signature.LoadKeyringFile(m.KeyringFile())
	if err != nil {
		t.Fatal(err)
	}
	if fps := kr.Fingerprints(); len(fps) != 1 || fps[0] != m.Fingerprint() {
		t.Fatalf("keyring file fingerprints %v, want [%s]", fps, m.Fingerprint())
	}
}

// The mirror is used from many goroutines at once: requests, fault changes
// and counters must not race (run with -race).
func TestConcurrentUse(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithKernelSize(8<<10, 8<<10))
	p := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleKernel)
	want := m.Content(p)
	const workers, rounds = 4, 5
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				resp, body, err := get(t, m.FileURL(p), nil)
				if err == nil && resp.StatusCode == http.StatusOK && !bytes.Equal(body, want) {
					t.Errorf("200 response with wrong body")
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			m.SetFault(p, testmirror.Fault{Status: 503, Times: 1})
			m.Throttle(1 << 30)
			_ = m.BytesServed(p) + int64(m.Requests(p)+m.TotalContentRequests())
			m.ClearFault(p)
			m.Throttle(0)
		}
	})
	wg.Wait()
	if got := m.Requests(p); got != workers*rounds {
		t.Fatalf("Requests = %d, want %d", got, workers*rounds)
	}
}
