package catalog_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/signature"
)

// ubuntuFingerprint is the published Ubuntu cloud-image signing key (see
// /work/shared/notes/image-catalogs.md); the built-in catalog must trust it.
const ubuntuFingerprint = "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"

func TestParseArch(t *testing.T) {
	tests := []struct {
		in   string
		want image.Arch
		ok   bool
	}{
		{"amd64", image.ArchAMD64, true},
		{"X86_64", image.ArchAMD64, true},
		{"arm64", image.ArchARM64, true},
		{"AArch64", image.ArchARM64, true},
		{"riscv64", "", false},
		{"", "", false},
		{"amd64\x00", "", false},
	}
	for _, tt := range tests {
		got, err := image.ParseArch(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseArch(%q) = %q, %v; want %q ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, catalog.ErrInvalidSpec) {
			t.Errorf("ParseArch(%q) error %v is not ErrInvalidSpec", tt.in, err)
		}
	}
	if runtime.GOARCH == "amd64" && image.HostArch() != image.ArchAMD64 ||
		runtime.GOARCH == "arm64" && image.HostArch() != image.ArchARM64 {
		t.Errorf("HostArch() = %q on %s", image.HostArch(), runtime.GOARCH)
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name string
		in   image.Spec
		want image.Spec // zero: expect ErrInvalidSpec
	}{
		{"plain", image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "arm64"}, image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchARM64}},
		{"case", image.Spec{Distro: "Ubuntu", Version: "Noble", Arch: "X86_64"}, image.Spec{Distro: "ubuntu", Version: "noble", Arch: image.ArchAMD64}},
		{"host arch", image.Spec{Distro: "debian", Version: "12", Arch: ""}, image.Spec{Distro: "debian", Version: "12", Arch: image.HostArch()}},
		{"max length", image.Spec{Distro: strings.Repeat("a", 64), Version: "1", Arch: "amd64"}, image.Spec{Distro: strings.Repeat("a", 64), Version: "1", Arch: image.ArchAMD64}},
		{"empty distro", image.Spec{Distro: "", Version: "1", Arch: "amd64"}, image.Spec{}},
		{"empty version", image.Spec{Distro: "ubuntu", Version: "", Arch: "amd64"}, image.Spec{}},
		{"traversal", image.Spec{Distro: "ubuntu", Version: "../../etc", Arch: "amd64"}, image.Spec{}},
		{"dotdot inside", image.Spec{Distro: "ubuntu", Version: "24..04", Arch: "amd64"}, image.Spec{}},
		{"slash", image.Spec{Distro: "ubu/ntu", Version: "24.04", Arch: "amd64"}, image.Spec{}},
		{"backslash", image.Spec{Distro: "ubuntu", Version: "24\\04", Arch: "amd64"}, image.Spec{}},
		{"nul", image.Spec{Distro: "ubuntu\x00", Version: "24.04", Arch: "amd64"}, image.Spec{}},
		{"newline", image.Spec{Distro: "ubuntu", Version: "24.04\n", Arch: "amd64"}, image.Spec{}},
		{"leading dot", image.Spec{Distro: "ubuntu", Version: ".hidden", Arch: "amd64"}, image.Spec{}},
		{"leading dash", image.Spec{Distro: "-rf", Version: "1", Arch: "amd64"}, image.Spec{}},
		{"url chars", image.Spec{Distro: "ubuntu", Version: "24.04?x=1", Arch: "amd64"}, image.Spec{}},
		{"unicode", image.Spec{Distro: "ubuntü", Version: "1", Arch: "amd64"}, image.Spec{}},
		{"kelvin sign folds to ASCII k", image.Spec{Distro: "ubuntu", Version: "\u212aey", Arch: "amd64"}, image.Spec{}},
		{"too long", image.Spec{Distro: strings.Repeat("a", 65), Version: "1", Arch: "amd64"}, image.Spec{}},
		{"bad arch", image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "sparc"}, image.Spec{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.Normalize()
			if tt.want == (image.Spec{}) {
				if !errors.Is(err, catalog.ErrInvalidSpec) {
					t.Fatalf("Normalize(%q) = %v, %v; want ErrInvalidSpec", tt.in, got, err)
				}
				if strings.ContainsAny(err.Error(), "\x00\n") {
					t.Fatalf("error message carries raw control characters: %q", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Normalize(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func mustNew(t *testing.T, opts ...catalog.Option) *catalog.Catalog {
	t.Helper()
	c, err := catalog.New(opts...)
	if err != nil {
		t.Fatalf("catalog.New: %v", err)
	}
	return c
}

func roles(p catalog.Plan) []image.Role {
	var out []image.Role
	for _, a := range p.Assets {
		out = append(out, a.Role)
	}
	return out
}

func TestPlanUbuntu(t *testing.T) {
	c := mustNew(t)
	for _, arch := range []image.Arch{image.ArchAMD64, image.ArchARM64} {
		for _, version := range []string{"24.04", "noble"} {
			p, err := c.Plan(image.Spec{Distro: "ubuntu", Version: version, Arch: arch, Serial: "20260926.1"})
			if err != nil {
				t.Fatalf("Plan(ubuntu %s %s): %v", version, arch, err)
			}
			if p.Spec.Version != "24.04" || p.Spec.Serial != "20260926.1" || p.BootMode != catalog.BootKernel {
				t.Errorf("spec %v boot %s", p.Spec, p.BootMode)
			}
			if got := roles(p); !slices.Equal(got, []image.Role{image.RoleDisk, image.RoleKernel, image.RoleInitramfs}) {
				t.Fatalf("roles %v", got)
			}
			// Everything comes from the serial's own directory, never the moving release/.
			base := "https://cloud-images.ubuntu.com/releases/24.04/release-20260926.1/"
			prefix := "ubuntu-24.04-server-cloudimg-" + string(arch)
			want := []struct{ name, url, manifest string }{
				{prefix + ".img", base + prefix + ".img", base + "SHA256SUMS"},
				{prefix + "-vmlinuz-generic", base + "unpacked/" + prefix + "-vmlinuz-generic", base + "unpacked/SHA256SUMS"},
				{prefix + "-initrd-generic", base + "unpacked/" + prefix + "-initrd-generic", base + "unpacked/SHA256SUMS"},
			}
			for i, a := range p.Assets {
				m := a.Manifest
				if a.Name != want[i].name || a.URL != want[i].url || m.URL != want[i].manifest ||
					m.Signature != catalog.SignatureDetached || m.SignatureURL != m.URL+".gpg" {
					t.Errorf("asset %d = %+v\nwant %+v", i, a, want[i])
				}
				if m.Keyring == nil || !slices.Contains(m.Keyring.Fingerprints(), ubuntuFingerprint) {
					t.Errorf("asset %d not checked against the Ubuntu key", i)
				}
			}
			if p.Assets[0].Format != image.FormatQCOW2 {
				t.Errorf("disk format %q", p.Assets[0].Format)
			}
		}
	}
}

func TestPlanDebianAndFedora(t *testing.T) {
	key := signtest.NewKey(t, "fedora test")
	tests := []struct {
		name       string
		opts       []catalog.Option
		spec       image.Spec
		wantErr    error
		wantSigned catalog.SignatureKind
		check      func(t *testing.T, p catalog.Plan)
	}{
		{"debian number", nil, image.Spec{Distro: "debian", Version: "12", Arch: "arm64", Serial: "20260901-2211"}, nil, catalog.SignatureNone, func(t *testing.T, p catalog.Plan) {
			a := p.Assets[0]
			if a.URL != "https://cloud.debian.org/images/cloud/bookworm/20260901-2211/debian-12-genericcloud-arm64-20260901-2211.qcow2" ||
				a.Manifest.URL != "https://cloud.debian.org/images/cloud/bookworm/20260901-2211/SHA512SUMS" ||
				a.Manifest.UnsignedNote == "" || a.Manifest.Keyring != nil {
				t.Errorf("%+v", a)
			}
		}},
		{"debian codename", nil, image.Spec{Distro: "debian", Version: "Trixie", Arch: "amd64", Serial: "20260901-2211"}, nil, catalog.SignatureNone, func(t *testing.T, p catalog.Plan) {
			if p.Spec.Version != "13" || !strings.Contains(p.Assets[0].URL, "/trixie/20260901-2211/debian-13-genericcloud-amd64-20260901-2211.qcow2") {
				t.Errorf("%v %s", p.Spec, p.Assets[0].URL)
			}
		}},
		{"debian unknown version", nil, image.Spec{Distro: "debian", Version: "10", Arch: "amd64"}, catalog.ErrUnknownVersion, "", nil},
		{"fedora without key", nil, image.Spec{Distro: "fedora", Version: "41", Arch: "amd64"}, catalog.ErrNoTrustedKey, "", nil},
		{"fedora with key", []catalog.Option{catalog.WithKeyring(key.Keyring())}, image.Spec{Distro: "fedora", Version: "41", Arch: "arm64"}, nil, catalog.SignatureClearsigned, func(t *testing.T, p catalog.Plan) {
			a := p.Assets[0]
			dir := "https://download.fedoraproject.org/pub/fedora/linux/releases/41/Cloud/aarch64/images/"
			if a.Name != "" || a.URL != dir || a.Manifest.IndexURL != dir || a.Manifest.URL != "" {
				t.Errorf("%+v", a)
			}
			for name, want := range map[string]bool{
				"Fedora-Cloud-Base-Generic-41-1.4.aarch64.qcow2":     true,
				"Fedora-Cloud-Base-Generic-41-1.4.aarch64.raw.xz":    false,
				"Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2":      false,
				"Fedora-Cloud-Base-Generic-411-1.4.aarch64.qcow2":    false,
				"xFedora-Cloud-Base-Generic-41-1.4.aarch64.qcow2":    false,
				"Fedora-Cloud-Base-Generic-41-1.4.aarch64.qcow2.sig": false,
			} {
				if a.NamePattern.MatchString(name) != want {
					t.Errorf("name pattern %s on %s: want %v", a.NamePattern, name, want)
				}
			}
			if !a.Manifest.Pattern.MatchString("Fedora-Cloud-41-1.4-aarch64-CHECKSUM") || a.Manifest.Pattern.MatchString("Fedora-Cloud-41-1.4-x86_64-CHECKSUM") {
				t.Errorf("manifest pattern %s", a.Manifest.Pattern)
			}
			if got := a.URLFor("Fedora-Cloud-Base-Generic-41-1.4.aarch64.qcow2"); got != dir+"Fedora-Cloud-Base-Generic-41-1.4.aarch64.qcow2" {
				t.Errorf("URLFor = %s", got)
			}
		}},
		{"fedora allow unsigned", []catalog.Option{catalog.WithAllowUnsigned(true)}, image.Spec{Distro: "fedora", Version: "41", Arch: "amd64"}, nil, catalog.SignatureClearsigned, func(t *testing.T, p catalog.Plan) {
			if !p.AllowUnsigned || p.Assets[0].Manifest.Keyring != nil {
				t.Errorf("%+v", p)
			}
		}},
		{"fedora codename-free version check", nil, image.Spec{Distro: "fedora", Version: "rawhide", Arch: "amd64"}, catalog.ErrUnknownVersion, "", nil},
		{"alpine", nil, image.Spec{Distro: "alpine", Version: "3.20", Arch: "amd64"}, catalog.ErrUnsupportedDistro, "", nil},
		{"unknown", nil, image.Spec{Distro: "gentoo", Version: "1", Arch: "amd64"}, catalog.ErrUnknownDistro, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := mustNew(t, tt.opts...).Plan(tt.spec)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Plan = %v; want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.BootMode != catalog.BootFirmware || !slices.Equal(roles(p), []image.Role{image.RoleDisk}) {
				t.Fatalf("boot %s roles %v", p.BootMode, roles(p))
			}
			if got := p.Assets[0].Manifest.Signature; got != tt.wantSigned {
				t.Fatalf("signature %s, want %s", got, tt.wantSigned)
			}
			tt.check(t, p)
		})
	}
}

func TestDistroErrors(t *testing.T) {
	c := mustNew(t)
	_, err := c.Plan(image.Spec{Distro: "alpine", Version: "3.20", Arch: "amd64"})
	var ue *catalog.UnsupportedError
	if !errors.As(err, &ue) || ue.Reason == "" || ue.Instead == "" || !strings.Contains(err.Error(), "instead") {
		t.Fatalf("alpine: %v", err)
	}
	_, err = c.Plan(image.Spec{Distro: "gentoo", Version: "1", Arch: "amd64"})
	var de *catalog.UnknownDistroError
	if !errors.As(err, &de) || !slices.Equal(de.Supported, c.Distros()) {
		t.Fatalf("gentoo: %v", err)
	}
	for _, d := range c.Distros() {
		if !strings.Contains(err.Error(), d) {
			t.Errorf("message %q does not list %s", err, d)
		}
	}
	if slices.Contains(c.Distros(), "alpine") {
		t.Errorf("Distros() %v lists unsupported alpine", c.Distros())
	}
	_, err = mustNew(t).Plan(image.Spec{Distro: "fedora", Version: "41", Arch: "amd64"})
	if err == nil || !strings.Contains(err.Error(), "--keyring") {
		t.Fatalf("fedora without a key must say to pass --keyring: %v", err)
	}
}

func TestWithMirror(t *testing.T) {
	const mirror = "http://127.0.0.1:9/m/"
	c := mustNew(t, catalog.WithMirror(mirror), catalog.WithAllowUnsigned(true))
	for _, spec := range []image.Spec{{Distro: "ubuntu", Version: "22.04", Arch: "amd64", Serial: "20260101"}, {Distro: "debian", Version: "11", Arch: "arm64", Serial: "20260101-0001"}, {Distro: "fedora", Version: "40", Arch: "amd64"}} {
		p, err := c.Plan(spec)
		if err != nil {
			t.Fatal(err)
		}
		if spec.Serial != "" {
			src, err := c.Serials(spec)
			if err != nil || !strings.HasPrefix(src.IndexURL, mirror) {
				t.Errorf("%v: serials listed at %q (%v), not under the mirror", spec, src.IndexURL, err)
			}
		}
		for _, a := range p.Assets {
			for _, u := range []string{a.URL, a.Manifest.URL, a.Manifest.IndexURL, a.Manifest.SignatureURL} {
				if u != "" && !strings.HasPrefix(u, mirror) {
					t.Errorf("%v: %s is not under the mirror", spec, u)
				}
			}
		}
	}
	for _, bad := range []string{"ftp://x/", "127.0.0.1:80", "http:///path", "http://h/?q=1"} {
		if _, err := catalog.New(catalog.WithMirror(bad)); !errors.Is(err, catalog.ErrInvalidCatalog) {
			t.Errorf("WithMirror(%q): %v, want ErrInvalidCatalog", bad, err)
		}
	}
}

// userCatalog is the same image in both file formats.
const userJSON = `{"images": [{
  "distro": "mybuntu",
  "base_url": "https://images.example.org/base",
  "versions": ["1.0", "2.0"],
  "codenames": {"2.0": "bravo"},
  "arches": {"amd64": "x64"},
  "boot_mode": "kernel",
  "keyring": "keys/my.asc",
  "assets": [
    {"role": "disk", "url": "{codename}/{arch}/disk-{version}.raw", "format": "raw",
     "manifest": {"url": "{codename}/{arch}/SUMS", "signature": "detached", "signature_url": "{codename}/{arch}/SUMS.sig"}},
    {"role": "kernel", "url": "{codename}/{arch}/vmlinuz", "name": "boot/vmlinuz",
     "manifest": {"url": "{codename}/{arch}/SUMS", "signature": "detached", "signature_url": "{codename}/{arch}/SUMS.sig"}}
  ]}]}`

const userYAML = `
images:
  - distro: mybuntu
    base_url: https://images.example.org/base
    versions: ["1.0", "2.0"]
    codenames: {"2.0": bravo}
    arches: {amd64: x64}
    boot_mode: kernel
    keyring: keys/my.asc
    assets:
      - role: disk
        url: "{codename}/{arch}/disk-{version}.raw"
        format: raw
        manifest: &sums
          url: "{codename}/{arch}/SUMS"
          signature: detached
          signature_url: "{codename}/{arch}/SUMS.sig"
      - role: kernel
        url: "{codename}/{arch}/vmlinuz"
        name: boot/vmlinuz
        manifest: *sums
`

func writeCatalog(t *testing.T, name, content string, key *signtest.Key) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o755); err != nil {
		t.Fatal(err)
	}
	if key != nil {
		if err := os.WriteFile(filepath.Join(dir, "keys", "my.asc"), key.ArmoredPublic(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUserCatalogFile(t *testing.T) {
	key := signtest.NewKey(t, "user catalog")
	for _, tc := range []struct{ name, content string }{{"cat.json", userJSON}, {"cat.yaml", userYAML}, {"cat.yml", userYAML}} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustNew(t, catalog.WithFile(writeCatalog(t, tc.name, tc.content, key)))
			if !slices.Contains(c.Distros(), "mybuntu") || !slices.Contains(c.Distros(), "ubuntu") {
				t.Fatalf("Distros() = %v", c.Distros())
			}
			p, err := c.Plan(image.Spec{Distro: "mybuntu", Version: "bravo", Arch: "amd64"})
			if err != nil {
				t.Fatal(err)
			}
			base := "https://images.example.org/base/bravo/x64/"
			d, k := p.Assets[0], p.Assets[1]
			if d.URL != base+"disk-2.0.raw" || d.Name != "disk-2.0.raw" || d.Format != image.FormatRaw ||
				k.URL != base+"vmlinuz" || k.Name != "boot/vmlinuz" ||
				d.Manifest.URL != base+"SUMS" || d.Manifest.SignatureURL != base+"SUMS.sig" || d.Manifest.ID() != k.Manifest.ID() {
				t.Fatalf("plan %+v", p)
			}
			if fps := d.Manifest.Keyring.Fingerprints(); !slices.Equal(fps, []string{key.Fingerprint()}) {
				t.Fatalf("keyring %v, want the file's key %s", fps, key.Fingerprint())
			}
			if _, err := c.Plan(image.Spec{Distro: "mybuntu", Version: "2.0", Arch: "arm64"}); !errors.Is(err, catalog.ErrUnsupportedArch) {
				t.Fatalf("arm64: %v, want ErrUnsupportedArch", err)
			}
			if _, err := c.Plan(image.Spec{Distro: "mybuntu", Version: "1.0", Arch: "amd64"}); !errors.Is(err, catalog.ErrUnknownVersion) {
				t.Fatalf("1.0 has no codename for {codename}: %v, want ErrUnknownVersion", err)
			}
		})
	}
}

func TestUserCatalogOverridesBuiltin(t *testing.T) {
	content := strings.Replace(userYAML, "distro: mybuntu", "distro: ubuntu", 1)
	c := mustNew(t, catalog.WithFile(writeCatalog(t, "c.yaml", content, signtest.NewKey(t, "k"))))
	p, err := c.Plan(image.Spec{Distro: "ubuntu", Version: "2.0", Arch: "amd64"})
	if err != nil || !strings.HasPrefix(p.Assets[0].URL, "https://images.example.org/") {
		t.Fatalf("override: %+v %v", p, err)
	}
}

func TestInvalidCatalogFiles(t *testing.T) {
	key := signtest.NewKey(t, "k")
	tests := []struct {
		name, file, content string
		key                 *signtest.Key
	}{
		{"unknown field", "c.yaml", strings.Replace(userYAML, "boot_mode: kernel", "boot_mode: kernel\n    bootmode: x", 1), key},
		{"unknown json field", "c.json", strings.Replace(userJSON, `"boot_mode"`, `"bootmode": 1, "boot_mode"`, 1), key},
		{"trailing json", "c.json", userJSON + "{}", key},
		{"bad placeholder", "c.yaml", strings.Replace(userYAML, "{arch}/vmlinuz", "{arc}/vmlinuz", 1), key},
		{"absolute url", "c.yaml", strings.Replace(userYAML, `"{codename}/{arch}/vmlinuz"`, `"https://evil.example/vmlinuz"`, 1), key},
		{"leading slash", "c.yaml", strings.Replace(userYAML, `"{codename}/{arch}/vmlinuz"`, `"/etc/passwd"`, 1), key},
		{"dotdot", "c.yaml", strings.Replace(userYAML, `"{codename}/{arch}/vmlinuz"`, `"../{arch}/vmlinuz"`, 1), key},
		{"name not last", "c.yaml", strings.Replace(userYAML, `"{codename}/{arch}/vmlinuz"`, `"{name}/vmlinuz"`, 1), key},
		{"no disk", "c.yaml", strings.Replace(userYAML, "role: disk", "role: initramfs", 1), key},
		{"kernel in firmware mode", "c.yaml", strings.Replace(userYAML, "boot_mode: kernel", "boot_mode: firmware", 1), key},
		{"bad signature kind", "c.yaml", strings.Replace(userYAML, "signature: detached", "signature: maybe", 1), key},
		{"missing keyring file", "c.yaml", userYAML, nil},
		{"bad base url", "c.yaml", strings.Replace(userYAML, "https://images.example.org/base", "file:///etc", 1), key},
		{"bad distro", "c.yaml", strings.Replace(userYAML, "distro: mybuntu", "distro: ../x", 1), key},
		{"bad arch key", "c.yaml", strings.Replace(userYAML, "{amd64: x64}", "{mips: x64}", 1), key},
		{"bad version pattern", "c.yaml", strings.Replace(userYAML, `versions: ["1.0", "2.0"]`, `version_pattern: "("`, 1), key},
		{"empty", "c.yaml", "", key},
		{"no images", "c.json", `{"images": []}`, key},
		{"wrong extension", "c.toml", userYAML, key},
		{"not yaml", "c.yaml", "images: [\x00", key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeCatalog(t, tt.file, tt.content, tt.key)
			_, err := catalog.New(catalog.WithFile(p))
			if !errors.Is(err, catalog.ErrInvalidCatalog) {
				t.Fatalf("New: %v, want ErrInvalidCatalog", err)
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
	if _, err := catalog.New(catalog.WithFile(filepath.Join(t.TempDir(), "none.yaml"))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// The keyring given to WithKeyring replaces the built-in Ubuntu key.
func TestWithKeyringReplaces(t *testing.T) {
	key := signtest.NewKey(t, "mirror")
	p, err := mustNew(t, catalog.WithKeyring(key.Keyring())).Plan(image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: "20260926"})
	if err != nil {
		t.Fatal(err)
	}
	var kr *signature.Keyring = p.Assets[0].Manifest.Keyring
	if fps := kr.Fingerprints(); !slices.Equal(fps, []string{key.Fingerprint()}) {
		t.Fatalf("fingerprints %v", fps)
	}
}

// A pattern template that compiles with the placeholder values used for
// validation may not compile with a user's version (Go caps repeat counts
// at 1000): Plan must return an error, not panic.
func TestPlanPatternFailsToCompileForVersion(t *testing.T) {
	content := `
images:
  - distro: braces
    base_url: https://images.example.org/
    version_pattern: '[0-9]+'
    arches: {amd64: amd64}
    boot_mode: firmware
    assets:
      - role: disk
        url: '{version}/{name}'
        name_pattern: 'disk-x{{version}}\.qcow2'
        manifest:
          index: '{version}/'
          pattern: 'SUMS-x{{version}}'
          signature: none
`
	c := mustNew(t, catalog.WithFile(writeCatalog(t, "braces.yaml", content, signtest.NewKey(t, "k"))))
	if _, err := c.Plan(image.Spec{Distro: "braces", Version: "12", Arch: "amd64"}); err != nil {
		t.Fatalf("version 12: %v", err)
	}
	_, err := c.Plan(image.Spec{Distro: "braces", Version: "1001", Arch: "amd64"})
	if !errors.Is(err, catalog.ErrInvalidCatalog) || !strings.Contains(err.Error(), "name_pattern") {
		t.Fatalf("version 1001: %v; want ErrInvalidCatalog naming name_pattern", err)
	}
}
