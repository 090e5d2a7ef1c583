package testmirror

import (
	"bytes"
	"compress/gzip"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
)

// Option configures New.
type Option func(*config)

type config struct {
	ubuntu        []string
	ubuntuSerials []string
	debian        []string
	debianSerials []string
	fedora        []string
	arches        []image.Arch
	virtualSize   int64
	dataSize      int64
	compressDisk  bool
	kernelSize    int
	initrdSize    int
	gzipKernel    map[image.Arch]bool
	listen        string
	classic       classicLayout
}

// classicLayout is how an Ubuntu version is laid out: by serial (the default).
type classicLayout int

const (
	layoutSerials            classicLayout = iota
	layoutClassic                          // only release/, with unpacked/build-info.txt
	layoutClassicNoBuildInfo               // only release/, nothing naming its build
)

func defaultConfig() config {
	return config{
		ubuntu:        []string{"24.04"},
		ubuntuSerials: []string{DefaultUbuntuSerial},
		debianSerials: []string{DefaultDebianSerial},
		arches:        []image.Arch{image.ArchAMD64, image.ArchARM64},
		virtualSize:   64 << 20,
		dataSize:      4 << 20,
		compressDisk:  true,
		kernelSize:    256 << 10,
		initrdSize:    512 << 10,
		gzipKernel:    map[image.Arch]bool{image.ArchARM64: true},
	}
}

// WithUbuntu sets the Ubuntu versions published (default "24.04"); with no
// arguments, no Ubuntu images are published.
func WithUbuntu(versions ...string) Option {
	return func(c *config) { c.ubuntu = slices.Clone(versions) }
}

// WithSerials sets the builds published for every Ubuntu version (default
// DefaultUbuntuSerial), each in its own release-<serial>/ directory with its
// own signed manifests and distinct content; release/ holds a copy of the
// newest, as on cloud-images.ubuntu.com. At least one is needed.
func WithSerials(serials ...string) Option {
	return func(c *config) { c.ubuntuSerials = slices.Clone(serials) }
}

// WithClassicLayout publishes each Ubuntu version the way the original
// Rust module read it and partial rsyncs of the Ubuntu tree hold it: only
// the release/ directory, no release-<serial>/ ones. With buildInfo,
// release/unpacked/build-info.txt names its build ("serial=<newest>"), as on
// cloud-images.ubuntu.com; without, nothing says which build it is. Path and
// ManifestPath then name release/ files.
func WithClassicLayout(buildInfo bool) Option {
	return func(c *config) {
		c.classic = layoutClassicNoBuildInfo
		if buildInfo {
			c.classic = layoutClassic
		}
	}
}

// WithDebianSerials sets the dated builds published for every Debian version
// (default DefaultDebianSerial), each in its own <serial>/ directory whose
// file names carry the serial; latest/ holds a copy of the newest.
func WithDebianSerials(serials ...string) Option {
	return func(c *config) { c.debianSerials = slices.Clone(serials) }
}

// WithDebian publishes Debian genericcloud images for these release numbers
// ("11", "12", "13"), unsigned like the real ones. Off by default.
func WithDebian(versions ...string) Option {
	return func(c *config) { c.debian = slices.Clone(versions) }
}

// WithFedora publishes Fedora Cloud images for these release numbers with
// compose FedoraCompose and a clearsigned CHECKSUM. Off by default.
func WithFedora(versions ...string) Option {
	return func(c *config) { c.fedora = slices.Clone(versions) }
}

// WithArches sets the architectures published (default amd64 and arm64).
func WithArches(arches ...image.Arch) Option {
	return func(c *config) { c.arches = slices.Clone(arches) }
}

// WithDiskSize sets each disk's virtual size and how many bytes of data are
// written into it before conversion (default 64 MiB virtual, 4 MiB data).
// Half the data is random, half compressible, so a compressed qcow2 has both
// compressed and uncompressed clusters.
func WithDiskSize(virtual, data int64) Option {
	return func(c *config) { c.virtualSize, c.dataSize = virtual, min(data, virtual) }
}

// WithCompressedDisk chooses whether qemu-img compresses clusters, as Ubuntu's
// images are (default true). Turn it off for large benchmark disks.
func WithCompressedDisk(on bool) Option {
	return func(c *config) { c.compressDisk = on }
}

// WithKernelSize sets the kernel and initramfs sizes in bytes (before gzip).
func WithKernelSize(kernel, initramfs int) Option {
	return func(c *config) { c.kernelSize, c.initrdSize = kernel, initramfs }
}

// WithListenAddr serves the mirror on addr (host:port, port 0 for any)
// instead of a free port on 127.0.0.1: say, the gateway address of a Docker
// network, so that containers on it can download from the test's mirror.
func WithListenAddr(addr string) Option {
	return func(c *config) { c.listen = addr }
}

// WithGzipKernel sets which architectures get a gzip-compressed kernel, as
// Ubuntu's arm64 vmlinuz is (default: arm64 only).
func WithGzipKernel(arches ...image.Arch) Option {
	return func(c *config) {
		c.gzipKernel = map[image.Arch]bool{}
		for _, a := range arches {
			c.gzipKernel[a] = true
		}
	}
}

type builder struct {
	t       testing.TB
	m       *Mirror
	rng     *rand.ChaCha8
	scratch string
	qemuImg string
}

func newBuilder(t testing.TB, m *Mirror) *builder {
	t.Helper()
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		t.Fatalf("testmirror: seed: %v", err)
	}
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatalf("testmirror: qemu-img is required to build real qcow2 disks (install qemu-utils): %v", err)
	}
	return &builder{t: t, m: m, rng: rand.NewChaCha8(seed), scratch: t.TempDir(), qemuImg: qemuImg}
}

func (b *builder) build() {
	b.t.Helper()
	c := b.m.cfg
	for _, v := range c.ubuntu {
		if len(c.ubuntuSerials) == 0 {
			b.t.Fatalf("testmirror: Ubuntu %s: no serials", v)
		}
		for _, s := range c.ubuntuSerials {
			b.buildSerial("ubuntu", v, s)
		}
		b.m.setSerials("ubuntu", v, c.ubuntuSerials)
		if c.classic != layoutSerials {
			b.classic(v)
		}
	}
	for _, v := range c.debian {
		if debianCodenames[v] == "" {
			b.t.Fatalf("testmirror: unknown Debian release %q (want 11, 12 or 13)", v)
		}
		if len(c.debianSerials) == 0 {
			b.t.Fatalf("testmirror: Debian %s: no serials", v)
		}
		for _, s := range c.debianSerials {
			b.buildSerial("debian", v, s)
		}
		b.m.setSerials("debian", v, c.debianSerials)
	}
	for _, v := range c.fedora {
		for _, a := range c.arches {
			mf := &manifestFile{rel: manifestPath("fedora", v, "", a, image.RoleDisk), alg: digest.SHA256, style: styleFedora, sig: sigClearsigned}
			b.content(mf, assetPath("fedora", v, "", a, image.RoleDisk), b.qcow2())
			// The real directory also holds a raw.xz image; a name pattern must not pick it.
			b.content(mf, path.Join(fedoraDir(v, a), fmt.Sprintf("Fedora-Cloud-Base-Generic-%s-%s.%s.raw.xz", v, FedoraCompose, fedoraArch(a))), b.random(4096))
			b.publish(mf)
		}
	}
}

// buildSerial publishes one build of an Ubuntu or Debian version in its own
// directory, with fresh content, dated by its serial.
func (b *builder) buildSerial(distro, v, serial string) {
	b.t.Helper()
	c := b.m.cfg
	dir := buildDir(distro, v, serial)
	switch distro {
	case "ubuntu":
		rel := &manifestFile{rel: manifestPath(distro, v, serial, "", image.RoleDisk), alg: digest.SHA256, style: styleGNUBinary, sig: sigDetached}
		unp := &manifestFile{rel: manifestPath(distro, v, serial, "", image.RoleKernel), alg: digest.SHA256, style: styleGNUBinary, sig: sigDetached}
		for _, a := range c.arches {
			b.content(rel, assetPath(distro, v, serial, a, image.RoleDisk), b.qcow2())
			// A neighbour the real directory also has, so lookups must match exactly.
			b.content(rel, path.Join(dir, ubuntuPrefix(v, a)+".manifest"), []byte("adduser\t3.137ubuntu1\napt\t2.7.14build2\n"))
			b.content(unp, assetPath(distro, v, serial, a, image.RoleKernel), b.kernel(a))
			b.content(unp, assetPath(distro, v, serial, a, image.RoleInitramfs), b.random(c.initrdSize))
		}
		b.publish(rel)
		b.publish(unp)
	case "debian":
		mf := &manifestFile{rel: manifestPath(distro, v, serial, "", image.RoleDisk), alg: digest.SHA512, style: styleGNUText, sig: sigNone}
		for _, a := range c.arches {
			b.content(mf, assetPath(distro, v, serial, a, image.RoleDisk), b.qcow2())
		}
		b.publish(mf)
	default:
		b.t.Fatalf("testmirror: %s publishes no serials", distro)
	}
	b.m.setModTime(dir, serialTime(serial))
}

// classic turns an Ubuntu version into the classic layout: the build
// directories go, release/ (a copy of the newest) stays, with a build-info
// file naming its serial unless the layout has none.
func (b *builder) classic(v string) {
	b.t.Helper()
	serials := b.m.Serials("ubuntu", v)
	for _, s := range serials {
		b.m.removeTree(buildDir("ubuntu", v, s))
	}
	if b.m.cfg.classic == layoutClassic {
		b.m.Put(BuildInfoPath(v), []byte(fmt.Sprintf("serial=%s\n", serials[0])))
	}
}

// BuildInfoPath is the mirror-relative path of the build-info file of an
// Ubuntu version's release/ directory.
func BuildInfoPath(version string) string {
	return path.Join(buildDir("ubuntu", version, ""), "unpacked", "build-info.txt")
}

// content writes a content file listed by mf, recording its published digest.
func (b *builder) content(mf *manifestFile, rel string, data []byte) {
	b.t.Helper()
	var h hash.Hash = sha256.New()
	if mf.alg == digest.SHA512 {
		h = sha512.New()
	}
	h.Write(data)
	b.m.writeFile(rel, data, kindContent, digest.FromHash(mf.alg, h))
	mf.entries = append(mf.entries, rel)
}

func (b *builder) publish(mf *manifestFile) {
	b.t.Helper()
	slices.Sort(mf.entries)
	b.m.publishManifest(mf, b.m.manifestText(mf))
}

func (b *builder) random(n int) []byte {
	p := make([]byte, n)
	_, _ = b.rng.Read(p)
	return p
}

func (b *builder) kernel(a image.Arch) []byte {
	b.t.Helper()
	k := b.random(b.m.cfg.kernelSize)
	if !b.m.cfg.gzipKernel[a] {
		return k
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(k)
	if err := zw.Close(); err != nil {
		b.t.Fatalf("testmirror: gzip kernel: %v", err)
	}
	return buf.Bytes()
}

// qcow2 makes a real qcow2 image: a sparse raw file with random and
// compressible data, converted by qemu-img.
func (b *builder) qcow2() []byte {
	b.t.Helper()
	c := b.m.cfg
	raw := filepath.Join(b.scratch, "disk.raw")
	out := filepath.Join(b.scratch, "disk.qcow2")
	_ = os.Remove(raw)
	_ = os.Remove(out)
	if err := b.writeRaw(raw, c.virtualSize, c.dataSize); err != nil {
		b.t.Fatalf("testmirror: write raw disk: %v", err)
	}
	args := []string{"convert", "-q", "-f", "raw", "-O", "qcow2"}
	if c.compressDisk {
		args = append(args, "-c")
	}
	args = append(args, raw, out)
	if msg, err := exec.Command(b.qemuImg, args...).CombinedOutput(); err != nil {
		b.t.Fatalf("testmirror: qemu-img %v: %v: %s", args, err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		b.t.Fatalf("testmirror: read qcow2: %v", err)
	}
	return data
}

// writeRaw writes random data at the start and compressible data at the
// middle of a sparse file of the given size.
func (b *builder) writeRaw(p string, size, data int64) (err error) {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	if err := f.Truncate(size); err != nil {
		return err
	}
	randomLen := data / 2
	buf := make([]byte, 1<<20)
	for off := int64(0); off < randomLen; off += int64(len(buf)) {
		n := min(int64(len(buf)), randomLen-off)
		_, _ = b.rng.Read(buf[:n])
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	pattern := []byte(hex.EncodeToString(b.random(32)) + " vmprep compressible block\n")
	start := (size / 2) &^ (64<<10 - 1)
	compLen := min(data-randomLen, size-start)
	for i := range buf {
		buf[i] = pattern[i%len(pattern)]
	}
	for off := int64(0); off < compLen; off += int64(len(buf)) {
		n := min(int64(len(buf)), compLen-off)
		if _, err := f.WriteAt(buf[:n], start+off); err != nil {
			return err
		}
	}
	return nil
}
