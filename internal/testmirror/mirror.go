// Package testmirror serves a local copy of the Ubuntu (and optionally Debian
// and Fedora) cloud-image layout over HTTP on 127.0.0.1, with real qcow2
// disks made by qemu-img and manifests signed by a throwaway OpenPGP key.
// It exists for tests: it counts requests and bytes per path, throttles,
// and injects faults (HTTP errors, connection resets, stalls, ignored
// ranges, wrong bytes) so that fetchers and pipelines can be tested against
// a real server instead of mocks.
//
// Ubuntu and Debian versions are published as builds in directories of their
// own, named by serial (WithSerials, WithDebianSerials), with a listing of
// the version's directory and a moving release/ (latest/) copy of the newest;
// AddSerial publishes a newer build and RollBack withdraws the newest.
//
// Typical use:
//
//	m := testmirror.New(t)
//	cat, err := catalog.New(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring()))
//	disk := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
//	m.SetFault(disk, testmirror.Fault{Status: 503, Times: 2})
package testmirror

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/signature"
)

// Fault changes how the mirror answers requests for one path. Fields combine:
// e.g. {IgnoreRange: true, Reset: true, After: 1 << 20}.
type Fault struct {
	// Status, when non-zero, answers with this HTTP status and a short body
	// instead of the file.
	Status int
	// RetryAfter, with Status, is sent as the Retry-After header.
	RetryAfter string
	// Times is how many requests the fault applies to; 0 means every request
	// until ClearFault.
	Times int
	// Reset closes the connection abruptly after After body bytes.
	Reset bool
	// Stall stops sending after After body bytes and holds the connection
	// open until the client gives up (or the mirror closes).
	Stall bool
	// After is the number of body bytes sent before Reset or Stall acts.
	After int64
	// IgnoreRange answers Range requests with 200 and the whole file, like
	// servers that do not support ranges.
	IgnoreRange bool
	// WrongBytes serves content of the right length whose every byte is
	// altered, so any digest over it mismatches.
	WrongBytes bool
}

type fileKind int

const (
	kindContent fileKind = iota
	kindManifest
	kindSignature
)

type sigKind int

const (
	sigNone sigKind = iota
	sigDetached
	sigClearsigned
)

type manifestStyle int

const (
	styleGNUBinary manifestStyle = iota // "hex *name" (Ubuntu)
	styleGNUText                        // "hex  name" (Debian)
	styleFedora                         // "# name: N bytes" + "SHA256 (name) = hex"
)

type file struct {
	kind      fileKind
	published digest.Digest // digest the manifest lists (content files)
	etag      string
	modTime   time.Time
}

type manifestFile struct {
	rel       string
	alg       digest.Algorithm
	style     manifestStyle
	sig       sigKind
	entries   []string // relative paths of the content files it lists
	plaintext []byte   // last unsigned text (before clearsigning)
}

type activeFault struct {
	Fault
	left int // remaining uses; <0 means unlimited
}

// Mirror is a running local mirror. All methods are safe for concurrent use.
type Mirror struct {
	// URL is the base URL, with a trailing slash, to pass to catalog.WithMirror.
	URL string
	// Dir is the directory the mirror's files live in (read-only for callers;
	// use Tamper, EditManifest, Remove to change them).
	Dir string

	t           testing.TB
	cfg         config
	key         *signtest.Key
	keyringFile string
	srv         *httptest.Server
	closed      chan struct{}

	b *builder // kept to publish builds later (AddSerial)

	mu        sync.Mutex
	serials   map[string][]string // "distro/version" → published serials, newest first
	files     map[string]*file
	manifests map[string]*manifestFile
	faults    map[string]*activeFault
	requests  map[string]int
	served    map[string]int64
	content   int // requests for content (non-manifest, non-signature) files
	throttle  int64
	halted    map[string]bool
}

// New builds the mirror's files and starts serving them. The server is closed
// when the test ends. It fails the test if qemu-img is missing.
func New(t testing.TB, opts ...Option) *Mirror {
	t.Helper()
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	m := &Mirror{
		Dir:       t.TempDir(),
		t:         t,
		cfg:       cfg,
		key:       signtest.NewKey(t, "vmprep testmirror"),
		closed:    make(chan struct{}),
		serials:   make(map[string][]string),
		files:     make(map[string]*file),
		manifests: make(map[string]*manifestFile),
		faults:    make(map[string]*activeFault),
		requests:  make(map[string]int),
		served:    make(map[string]int64),
		halted:    make(map[string]bool),
	}
	m.keyringFile = filepath.Join(t.TempDir(), "testmirror-keyring.asc")
	if err := os.WriteFile(m.keyringFile, m.key.ArmoredPublic(), 0o644); err != nil {
		t.Fatalf("testmirror: write keyring file: %v", err)
	}
	m.b = newBuilder(t, m)
	m.b.build()
	m.srv = httptest.NewUnstartedServer(m)
	if cfg.listen != "" {
		l, err := net.Listen("tcp", cfg.listen)
		if err != nil {
			t.Fatalf("testmirror: listen on %s: %v", cfg.listen, err)
		}
		m.srv.Listener.Close()
		m.srv.Listener = l
	}
	m.srv.Start()
	m.URL = m.srv.URL + "/"
	t.Cleanup(func() {
		close(m.closed) // releases stalled handlers so Close can return
		// A handler writing to a client whose network is gone (a container
		// cut off its network) would block Close until TCP gives up.
		m.srv.CloseClientConnections()
		m.srv.Close()
	})
	return m
}

// Keyring returns a keyring holding the mirror's signing key.
func (m *Mirror) Keyring() *signature.Keyring { return m.key.Keyring() }

// KeyringFile is the path of a file holding the mirror's armored public key
// (outside Dir, so it is not served).
func (m *Mirror) KeyringFile() string { return m.keyringFile }

// Fingerprint is the upper-case hex fingerprint of the mirror's signing key.
func (m *Mirror) Fingerprint() string { return m.key.Fingerprint() }

// Path returns the mirror-relative path of an asset of the newest build,
// e.g. "releases/24.04/release-20261120/ubuntu-24.04-server-cloudimg-amd64.img"
// (Fedora has no builds directories). The test fails if the mirror does not
// publish it.
func (m *Mirror) Path(distro, version string, arch image.Arch, role image.Role) string {
	m.t.Helper()
	return m.SerialPath(distro, version, m.newest(distro, version), arch, role)
}

// SerialPath returns the mirror-relative path of an asset of one build;
// serial "" names the moving directory (release/, latest/).
func (m *Mirror) SerialPath(distro, version, serial string, arch image.Arch, role image.Role) string {
	m.t.Helper()
	p := assetPath(distro, version, serial, arch, role)
	m.mu.Lock()
	_, ok := m.files[p]
	m.mu.Unlock()
	if p == "" || !ok {
		m.t.Fatalf("testmirror: no %s asset for %s %s %s (serial %q) in this mirror", role, distro, version, arch, serial)
	}
	return p
}

// MovingPath returns the path of an asset in the directory that is
// repointed at each publication (Ubuntu's release/, Debian's latest/).
func (m *Mirror) MovingPath(distro, version string, arch image.Arch, role image.Role) string {
	m.t.Helper()
	return m.SerialPath(distro, version, "", arch, role)
}

// ManifestPath returns the mirror-relative path of the checksum manifest that
// lists the asset in the newest build. For Ubuntu the detached signature is
// ManifestPath+".gpg".
func (m *Mirror) ManifestPath(distro, version string, arch image.Arch, role image.Role) string {
	m.t.Helper()
	return m.SerialManifestPath(distro, version, m.newest(distro, version), arch, role)
}

// SerialManifestPath is ManifestPath for one build.
func (m *Mirror) SerialManifestPath(distro, version, serial string, arch image.Arch, role image.Role) string {
	m.t.Helper()
	p := manifestPath(distro, version, serial, arch, role)
	m.mu.Lock()
	_, ok := m.manifests[p]
	m.mu.Unlock()
	if p == "" || !ok {
		m.t.Fatalf("testmirror: no manifest for %s %s %s %s (serial %q) in this mirror", role, distro, version, arch, serial)
	}
	return p
}

// VersionDir returns the directory whose listing names a version's builds
// ("releases/24.04"); Requests counts its listings under this name.
func (m *Mirror) VersionDir(distro, version string) string { return versionDir(distro, version) }

// Serials returns the serials published for a version, newest first.
func (m *Mirror) Serials(distro, version string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.serials[distro+"/"+version])
}

func (m *Mirror) newest(distro, version string) string {
	if distro != "ubuntu" && distro != "debian" || distro == "ubuntu" && m.cfg.classic != layoutSerials {
		return ""
	}
	s := m.Serials(distro, version)
	if len(s) == 0 {
		m.t.Fatalf("testmirror: %s %s has no builds in this mirror", distro, version)
	}
	return s[0]
}

// AddSerial publishes a new build of an Ubuntu or Debian version (fresh,
// signed content in its own directory), and points the moving directory at
// it if it is the newest.
func (m *Mirror) AddSerial(distro, version, serial string) {
	m.t.Helper()
	m.b.buildSerial(distro, version, serial)
	m.setSerials(distro, version, append(m.Serials(distro, version), serial))
}

// RollBack makes the mirror look rolled back to its previous build: the
// newest build's directory is removed (gone from the listing, its files
// answering 404) and the moving directory holds the previous build again.
// It returns the serial removed; the test fails if fewer than two remain.
func (m *Mirror) RollBack(distro, version string) string {
	m.t.Helper()
	serials := m.Serials(distro, version)
	if len(serials) < 2 {
		m.t.Fatalf("testmirror: RollBack(%s %s): %d builds, need two", distro, version, len(serials))
	}
	m.removeTree(buildDir(distro, version, serials[0]))
	m.setSerials(distro, version, serials[1:])
	return serials[0]
}

// setSerials records the published serials and copies the newest into the
// moving directory.
func (m *Mirror) setSerials(distro, version string, serials []string) {
	m.t.Helper()
	sorted := slices.Clone(serials)
	slices.SortFunc(sorted, func(a, b string) int { return image.CompareNatural(b, a) })
	sorted = slices.Compact(sorted)
	m.mu.Lock()
	m.serials[distro+"/"+version] = sorted
	m.mu.Unlock()
	moving := buildDir(distro, version, "")
	m.removeTree(moving)
	m.copyBuild(distro, buildDir(distro, version, sorted[0]), moving, sorted[0])
}

// copyBuild copies a build's files and manifests (signed anew) to dir.
func (m *Mirror) copyBuild(distro, from, to, serial string) {
	m.t.Helper()
	target := func(rel string) string {
		dir, name := path.Split(strings.TrimPrefix(rel, from+"/"))
		return path.Join(to, dir, movingName(distro, serial, name))
	}
	type item struct {
		rel string
		f   file
	}
	var contents []item
	var manifests []*manifestFile
	m.mu.Lock()
	for rel, f := range m.files {
		if strings.HasPrefix(rel, from+"/") && f.kind == kindContent {
			contents = append(contents, item{rel, *f})
		}
	}
	for rel, mf := range m.manifests {
		if strings.HasPrefix(rel, from+"/") {
			c := *mf
			c.rel = target(rel)
			c.entries = nil
			for _, e := range mf.entries {
				c.entries = append(c.entries, target(e))
			}
			manifests = append(manifests, &c)
		}
	}
	m.mu.Unlock()
	for _, it := range contents {
		m.writeFile(target(it.rel), m.Content(it.rel), kindContent, it.f.published)
	}
	for _, mf := range manifests {
		m.publishManifest(mf, m.manifestText(mf))
	}
}

// removeTree stops serving everything under dir.
func (m *Mirror) removeTree(dir string) {
	m.t.Helper()
	m.mu.Lock()
	for rel := range m.files {
		if strings.HasPrefix(rel, dir+"/") {
			delete(m.files, rel)
			delete(m.manifests, rel)
		}
	}
	m.mu.Unlock()
	if err := os.RemoveAll(m.diskPath(dir)); err != nil {
		m.t.Fatalf("testmirror: remove %s: %v", dir, err)
	}
}

// setModTime dates every file under dir, as a build published then.
func (m *Mirror) setModTime(dir string, t time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for rel, f := range m.files {
		if strings.HasPrefix(rel, dir+"/") {
			f.modTime = t
		}
	}
}

// FileURL returns the absolute URL of a mirror-relative path.
func (m *Mirror) FileURL(relPath string) string { return m.URL + strings.TrimPrefix(relPath, "/") }

// Digest returns the digest the manifest publishes for relPath (SHA-512 for
// Debian, SHA-256 otherwise). Tamper does not change it: it is what a
// verifier should expect.
func (m *Mirror) Digest(relPath string) digest.Digest {
	m.t.Helper()
	m.mu.Lock()
	f, ok := m.files[relPath]
	m.mu.Unlock()
	if !ok || f.kind != kindContent {
		m.t.Fatalf("testmirror: Digest(%q): no such content file", relPath)
	}
	return f.published
}

// Content returns the bytes currently served for relPath.
func (m *Mirror) Content(relPath string) []byte {
	m.t.Helper()
	b, err := os.ReadFile(m.diskPath(relPath))
	if err != nil {
		m.t.Fatalf("testmirror: Content(%q): %v", relPath, err)
	}
	return b
}

// Requests returns how many requests (any method, any outcome) asked for
// relPath (a directory listing is counted without its trailing slash).
func (m *Mirror) Requests(relPath string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests[relPath]
}

// BytesServed returns how many body bytes were written for relPath.
func (m *Mirror) BytesServed(relPath string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.served[relPath]
}

// TotalContentRequests counts requests for content files: everything but
// manifests, signatures and directory listings. A warm cache should keep it at 0.
func (m *Mirror) TotalContentRequests() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.content
}

// Throttle limits every response body to about bytesPerSecond; 0 removes the limit.
func (m *Mirror) Throttle(bytesPerSecond int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.throttle = max(bytesPerSecond, 0)
}

// Halt makes relPath's origin stop answering, as a server that died
// without closing its connections (or a link that went dark): responses in
// flight send no more bytes, and new requests get not even headers; each
// connection is held until the client gives up. It lasts until the mirror
// closes.
func (m *Mirror) Halt(relPath string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.halted[cleanRel(relPath)] = true
}

func (m *Mirror) isHalted(rel string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.halted[rel]
}

// holdSilent keeps a request's connection open, sending nothing, until the
// client gives up or the mirror closes.
func (m *Mirror) holdSilent(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-m.closed:
	}
}

// Stop stops the mirror as a process that exits: open connections are cut
// and new ones refused. It cannot be started again.
func (m *Mirror) Stop() {
	_ = m.srv.Listener.Close()
	m.srv.CloseClientConnections()
}

// SetFault installs a fault for relPath, replacing any previous one.
func (m *Mirror) SetFault(relPath string, f Fault) {
	m.mu.Lock()
	defer m.mu.Unlock()
	left := f.Times
	if left <= 0 {
		left = -1
	}
	m.faults[relPath] = &activeFault{Fault: f, left: left}
}

// ClearFault removes the fault for relPath.
func (m *Mirror) ClearFault(relPath string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.faults, relPath)
}

// Tamper changes one byte of the file served at relPath, keeping its length
// (a hex digit stays a hex digit, so a tampered manifest still parses).
// The published digest and signatures are left as they were.
func (m *Mirror) Tamper(relPath string) {
	m.t.Helper()
	b := m.Content(relPath)
	if len(b) == 0 {
		m.t.Fatalf("testmirror: Tamper(%q): empty file", relPath)
	}
	i := tamperIndex(b)
	b[i] = tamperByte(b[i])
	m.replace(relPath, b)
}

// tamperIndex picks a hex digit at or after the middle of a manifest-like
// file, else the middle byte.
func tamperIndex(b []byte) int {
	mid := len(b) / 2
	for i := mid; i < len(b); i++ {
		if isHex(b[i]) && i > 0 && isHex(b[i-1]) {
			return i
		}
	}
	return mid
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

func tamperByte(c byte) byte {
	if isHex(c) {
		if c == '0' {
			return '1'
		}
		return '0'
	}
	return c ^ 0x01
}

// EditManifest rewrites the text of the manifest at relPath with edit and
// signs it again with the mirror's key (clearsigned or detached, as before),
// so the result is validly signed — e.g. to drop an entry.
func (m *Mirror) EditManifest(relPath string, edit func(text []byte) []byte) {
	m.t.Helper()
	m.mu.Lock()
	mf, ok := m.manifests[relPath]
	var text []byte
	if ok {
		text = bytes.Clone(mf.plaintext)
	}
	m.mu.Unlock()
	if !ok {
		m.t.Fatalf("testmirror: EditManifest(%q): no such manifest", relPath)
	}
	text = edit(text)
	m.publishManifest(mf, text)
}

// Remove stops serving relPath (requests get 404), e.g. to drop a signature.
func (m *Mirror) Remove(relPath string) {
	m.t.Helper()
	m.mu.Lock()
	_, ok := m.files[relPath]
	delete(m.files, relPath)
	delete(m.manifests, relPath)
	m.mu.Unlock()
	if !ok {
		m.t.Fatalf("testmirror: Remove(%q): no such file", relPath)
	}
	if err := os.Remove(m.diskPath(relPath)); err != nil {
		m.t.Fatalf("testmirror: Remove(%q): %v", relPath, err)
	}
}

// Put serves data at relPath as a content file that no manifest lists,
// replacing what was there.
func (m *Mirror) Put(relPath string, data []byte) {
	m.t.Helper()
	rel := cleanRel(relPath)
	if rel == "" {
		m.t.Fatalf("testmirror: Put(%q): invalid path", relPath)
	}
	sum := sha256.Sum256(data)
	m.writeFile(rel, data, kindContent, digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(sum[:])})
}

func (m *Mirror) diskPath(rel string) string { return filepath.Join(m.Dir, filepath.FromSlash(rel)) }

// writeFile stores data at rel and registers it. published is kept as given.
func (m *Mirror) writeFile(rel string, data []byte, kind fileKind, published digest.Digest) {
	m.t.Helper()
	p := m.diskPath(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		m.t.Fatalf("testmirror: %v", err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		m.t.Fatalf("testmirror: %v", err)
	}
	m.register(rel, kind, published, etagOf(data))
}

func (m *Mirror) register(rel string, kind fileKind, published digest.Digest, etag string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files[rel] = &file{kind: kind, published: published, etag: etag, modTime: nextModTime(m.files[rel])}
}

// nextModTime keeps Last-Modified moving forward on every change, at the
// one-second resolution HTTP dates have, so If-Range by date notices changes.
func nextModTime(prev *file) time.Time {
	now := time.Now().UTC().Truncate(time.Second)
	if prev != nil && !now.After(prev.modTime) {
		return prev.modTime.Add(time.Second)
	}
	return now
}

// replace rewrites an existing file's bytes, keeping its kind and published digest.
func (m *Mirror) replace(rel string, data []byte) {
	m.t.Helper()
	m.mu.Lock()
	f, ok := m.files[rel]
	m.mu.Unlock()
	if !ok {
		m.t.Fatalf("testmirror: %q: no such file", rel)
	}
	m.writeFile(rel, data, f.kind, f.published)
}

func etagOf(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:12]) + `"`
}

// publishManifest writes text as the manifest (and its signature) of mf.
func (m *Mirror) publishManifest(mf *manifestFile, text []byte) {
	m.t.Helper()
	m.mu.Lock()
	mf.plaintext = bytes.Clone(text)
	m.manifests[mf.rel] = mf
	m.mu.Unlock()
	switch mf.sig {
	case sigClearsigned:
		m.writeFile(mf.rel, m.key.Clearsign(text), kindManifest, digest.Digest{})
	case sigDetached:
		m.writeFile(mf.rel, text, kindManifest, digest.Digest{})
		m.writeFile(mf.rel+".gpg", m.key.DetachedArmored(text), kindSignature, digest.Digest{})
	default:
		m.writeFile(mf.rel, text, kindManifest, digest.Digest{})
	}
}

// manifestText renders the manifest for its entries, whose published digests
// are already recorded.
func (m *Mirror) manifestText(mf *manifestFile) []byte {
	var buf bytes.Buffer
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rel := range mf.entries {
		f := m.files[rel]
		name := path.Base(rel)
		switch mf.style {
		case styleGNUBinary:
			fmt.Fprintf(&buf, "%s *%s\n", f.published.Hex, name)
		case styleGNUText:
			fmt.Fprintf(&buf, "%s  %s\n", f.published.Hex, name)
		case styleFedora:
			size := int64(-1)
			if fi, err := os.Stat(m.diskPath(rel)); err == nil {
				size = fi.Size()
			}
			fmt.Fprintf(&buf, "# %s: %d bytes\n%s (%s) = %s\n",
				name, size, strings.ToUpper(string(f.published.Algorithm)), name, f.published.Hex)
		}
	}
	return buf.Bytes()
}

func cleanRel(p string) string {
	c := path.Clean("/" + p)
	return strings.TrimPrefix(c, "/")
}

// ServeHTTP serves the mirror. It is exported so a test can mount the mirror
// under another server; New already serves it on m.URL.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rel := cleanRel(r.URL.Path)
	isDir := rel == "" || strings.HasSuffix(r.URL.Path, "/")

	m.mu.Lock()
	m.requests[rel]++
	f := m.files[rel]
	var fault Fault
	if af := m.faults[rel]; af != nil {
		fault = af.Fault
		if af.left > 0 {
			af.left--
			if af.left == 0 {
				delete(m.faults, rel)
			}
		}
	}
	if f != nil && f.kind == kindContent {
		m.content++
	}
	throttle := m.throttle
	m.mu.Unlock()

	if m.isHalted(rel) {
		m.holdSilent(r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if fault.Status != 0 {
		if fault.RetryAfter != "" {
			w.Header().Set("Retry-After", fault.RetryAfter)
		}
		http.Error(w, fmt.Sprintf("testmirror: injected status %d", fault.Status), fault.Status)
		return
	}
	if f == nil {
		if isDir && m.serveIndex(w, r, rel) {
			return
		}
		http.NotFound(w, r)
		return
	}
	fh, err := os.Open(m.diskPath(rel))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer fh.Close()

	if fault.IgnoreRange {
		r = r.Clone(r.Context())
		r.Header.Del("Range")
		r.Header.Del("If-Range")
	}
	var content io.ReadSeeker = fh
	if fault.WrongBytes {
		content = wrongBytes{fh}
	}
	w.Header().Set("ETag", f.etag)
	cw := &bodyWriter{
		ResponseWriter: w,
		m:              m,
		rel:            rel,
		r:              r,
		rate:           throttle,
		fault:          fault,
	}
	http.ServeContent(cw, r, path.Base(rel), f.modTime, content)
}

// serveIndex writes an Apache-style HTML listing of the directory rel, as
// cloud-images.ubuntu.com and Fedora's mirrors serve (a date column after
// each link: the newest file under it); false if there is no such directory.
func (m *Mirror) serveIndex(w http.ResponseWriter, r *http.Request, rel string) bool {
	prefix := rel
	if prefix != "" {
		prefix += "/"
	}
	dates := map[string]time.Time{}
	m.mu.Lock()
	for p, f := range m.files {
		rest, ok := strings.CutPrefix(p, prefix)
		if !ok {
			continue
		}
		name, _, sub := strings.Cut(rest, "/")
		if sub {
			name += "/"
		}
		if d, seen := dates[name]; !seen || f.modTime.After(d) {
			dates[name] = f.modTime
		}
	}
	m.mu.Unlock()
	if len(dates) == 0 {
		return false
	}
	names := slices.Sorted(maps.Keys(dates))
	var b strings.Builder
	fmt.Fprintf(&b, "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<html><head><title>Index of /%s</title></head><body>\n<h1>Index of /%s</h1>\n<pre>", rel, rel)
	b.WriteString("<a href=\"?C=N;O=D\">Name</a>                    <a href=\"?C=M;O=A\">Last modified</a>      <a href=\"?C=S;O=A\">Size</a>\n<hr><a href=\"../\">Parent Directory</a>                             -\n")
	for _, n := range names {
		fmt.Fprintf(&b, "<a href=\"%s\">%s</a>%s  %s    -\n", n, n, strings.Repeat(" ", max(1, 30-len(n))), dates[n].UTC().Format("2006-01-02 15:04"))
	}
	b.WriteString("<hr></pre></body></html>\n")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, b.String())
	}
	return true
}

// wrongBytes alters every byte read, keeping offsets and length.
type wrongBytes struct{ io.ReadSeeker }

func (w wrongBytes) Read(p []byte) (int, error) {
	n, err := w.ReadSeeker.Read(p)
	for i := range p[:n] {
		p[i] ^= 0x5a
	}
	return n, err
}

// bodyWriter counts body bytes and applies throttling, resets and stalls.
type bodyWriter struct {
	http.ResponseWriter
	m       *Mirror
	rel     string
	r       *http.Request
	rate    int64
	fault   Fault
	written int64
}

func (b *bodyWriter) Write(p []byte) (int, error) {
	total := 0
	cut := b.fault.Reset || b.fault.Stall
	for len(p) > 0 {
		if b.m.isHalted(b.rel) {
			_ = http.NewResponseController(b.ResponseWriter).Flush()
			b.m.holdSilent(b.r)
			panic(http.ErrAbortHandler)
		}
		chunk := p
		if cut {
			left := b.fault.After - b.written
			if left <= 0 {
				b.interrupt()
			}
			if int64(len(chunk)) > left {
				chunk = chunk[:left]
			}
		}
		var pause time.Duration
		if b.rate > 0 {
			// Small chunks keep the rate smooth and let cancellation act quickly.
			step := max(min(b.rate/20, 64<<10), 1)
			if int64(len(chunk)) > step {
				chunk = chunk[:step]
			}
			pause = time.Duration(int64(len(chunk)) * int64(time.Second) / b.rate)
		}
		n, err := b.ResponseWriter.Write(chunk)
		b.written += int64(n)
		total += n
		b.m.mu.Lock()
		b.m.served[b.rel] += int64(n)
		b.m.mu.Unlock()
		if err != nil {
			return total, err
		}
		p = p[n:]
		if pause > 0 {
			if err := b.sleep(pause); err != nil {
				return total, err
			}
		}
	}
	if cut && b.written >= b.fault.After {
		b.interrupt()
	}
	return total, nil
}

func (b *bodyWriter) sleep(d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-b.r.Context().Done():
		return b.r.Context().Err()
	case <-b.m.closed:
		return http.ErrServerClosed
	}
}

// interrupt ends the response per the fault: the bytes so far are flushed,
// then the connection is dropped (after waiting, for a stall).
func (b *bodyWriter) interrupt() {
	_ = http.NewResponseController(b.ResponseWriter).Flush()
	if b.fault.Stall {
		select {
		case <-b.r.Context().Done():
		case <-b.m.closed:
		}
	}
	// The server recovers this value silently and closes the connection.
	panic(http.ErrAbortHandler)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (b *bodyWriter) Unwrap() http.ResponseWriter { return b.ResponseWriter }

// CatalogOptions points a catalog at the mirror and trusts its key:
// catalog.New(m.CatalogOptions()...).
func (m *Mirror) CatalogOptions() []catalog.Option {
	return []catalog.Option{catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring())}
}

// Start builds and serves a mirror outside a test, for Example functions
// (which get no testing.TB): stop shuts it down and removes its files. A
// failure to build it panics, which fails the example.
func Start(opts ...Option) (m *Mirror, stop func()) {
	tb := testutil.NewExampleTB("testmirror")
	return New(tb, opts...), tb.Close
}
