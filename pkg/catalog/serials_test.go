package catalog_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

func TestSerialSources(t *testing.T) {
	c := mustNew(t)
	tests := []struct {
		spec    image.Spec
		index   string
		listed  map[string]string // directory name → serial ("" if not a serial)
		version string
	}{
		{image.Spec{Distro: "ubuntu", Version: "noble", Arch: "arm64"}, "https://cloud-images.ubuntu.com/releases/24.04/", map[string]string{
			"release-20260926":    "20260926",
			"release-20260926.1":  "20260926.1",
			"release-20260926.10": "20260926.10",
			"release":             "",
			"release-2026":        "",
			"release-20260926.":   "",
			"release-20260926/x":  "",
			"xrelease-20260926":   "",
			"20260926":            "",
			"release-20260926.1a": "",
		}, "24.04"},
		{image.Spec{Distro: "debian", Version: "bookworm", Arch: "amd64", Serial: "20260101-0001"}, "https://cloud.debian.org/images/cloud/bookworm/", map[string]string{
			"20260901-2211":  "20260901-2211",
			"latest":         "",
			"daily":          "",
			"20260901":       "",
			"20260901-2211x": "",
		}, "12"},
	}
	for _, tt := range tests {
		src, err := c.Serials(tt.spec)
		if err != nil {
			t.Fatalf("Serials(%v): %v", tt.spec, err)
		}
		if src.IndexURL != tt.index || src.Spec.Version != tt.version || src.Spec.Serial != "" {
			t.Errorf("Serials(%v) = %+v; want index %s, version %s, no serial", tt.spec, src, tt.index, tt.version)
		}
		for name, want := range tt.listed {
			got, ok := src.Serial(name)
			if got != want || ok != (want != "") {
				t.Errorf("%s: Serial(%q) = %q, %v; want %q", tt.spec.Distro, name, got, ok, want)
			}
		}
	}
}

func TestSerialErrors(t *testing.T) {
	c := mustNew(t, catalog.WithKeyring(signtest.NewKey(t, "k").Keyring()))
	tests := []struct {
		name    string
		spec    image.Spec
		wantErr error
	}{
		{"ubuntu without serial", image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"}, catalog.ErrSerialRequired},
		{"fedora with serial", image.Spec{Distro: "fedora", Version: "41", Arch: "amd64", Serial: "20260926"}, catalog.ErrNoSerials},
		{"not an ubuntu serial", image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: "latest"}, catalog.ErrInvalidSpec},
		{"path in serial", image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: "20260926/../../x"}, catalog.ErrInvalidSpec},
		{"dotdot serial", image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: ".."}, catalog.ErrInvalidSpec},
		{"encoded serial", image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: "2026%2F"}, catalog.ErrInvalidSpec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Plan(tt.spec)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Plan(%v) = %v, want %v", tt.spec, err, tt.wantErr)
			}
		})
	}
	if _, err := c.Serials(image.Spec{Distro: "fedora", Version: "41", Arch: "amd64"}); !errors.Is(err, catalog.ErrNoSerials) {
		t.Errorf("Serials(fedora) = %v, want ErrNoSerials", err)
	}
	got, err := c.Canonical(image.Spec{Distro: "Ubuntu", Version: "Noble", Arch: "x86_64", Serial: "20260926.1"})
	if want := (image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: "20260926.1"}); err != nil || got != want {
		t.Errorf("Canonical = %v, %v; want %v", got, err, want)
	}
	if _, err := c.Canonical(image.Spec{Distro: "ubuntu", Version: "noble", Arch: "amd64"}); err != nil {
		t.Errorf("Canonical without serial: %v", err)
	}
	if _, err := c.Canonical(image.Spec{Distro: "alpine", Version: "3.20", Arch: "amd64"}); !errors.Is(err, catalog.ErrUnsupportedDistro) {
		t.Errorf("Canonical(alpine) = %v", err)
	}
}

const serialsYAML = `
images:
  - distro: dated
    base_url: https://images.example.org/
    versions: ["1"]
    arches: {amd64: amd64}
    boot_mode: firmware
    serials:
      index: "{version}/"
      directory: build-{serial}
      pattern: '[0-9]{8}'
    assets:
      - role: disk
        url: "{version}/build-{serial}/disk-{serial}.qcow2"
        manifest:
          url: "{version}/build-{serial}/SUMS"
          signature: detached
          signature_url: "{version}/build-{serial}/SUMS.sig"
`

func TestUserCatalogSerials(t *testing.T) {
	key := signtest.NewKey(t, "k")
	c := mustNew(t, catalog.WithFile(writeCatalog(t, "c.yaml", strings.Replace(serialsYAML, "    boot_mode", "    keyring: keys/my.asc\n    boot_mode", 1), key)))
	p, err := c.Plan(image.Spec{Distro: "dated", Version: "1", Arch: "amd64", Serial: "20260102"})
	if err != nil {
		t.Fatal(err)
	}
	if a := p.Assets[0]; a.URL != "https://images.example.org/1/build-20260102/disk-20260102.qcow2" || a.Manifest.SignatureURL != "https://images.example.org/1/build-20260102/SUMS.sig" {
		t.Errorf("plan %+v", a)
	}
	src, err := c.Serials(image.Spec{Distro: "dated", Version: "1", Arch: "amd64"})
	if err != nil || src.IndexURL != "https://images.example.org/1/" {
		t.Fatalf("Serials = %+v, %v", src, err)
	}
	if s, ok := src.Serial("build-20260102"); !ok || s != "20260102" {
		t.Errorf("Serial(build-20260102) = %q %v", s, ok)
	}

	bad := []struct{ name, from, to string }{
		{"asset without serial", `url: "{version}/build-{serial}/disk-{serial}.qcow2"`, `url: "{version}/latest/disk.qcow2"`},
		{"manifest without serial", `url: "{version}/build-{serial}/SUMS"`, `url: "{version}/latest/SUMS"`},
		{"signature without serial", `signature_url: "{version}/build-{serial}/SUMS.sig"`, `signature_url: "{version}/latest/SUMS.sig"`},
		{"directory with a slash", `directory: build-{serial}`, `directory: a/build-{serial}`},
		{"directory without serial", `directory: build-{serial}`, `directory: build`},
		{"bad pattern", `pattern: '[0-9]{8}'`, `pattern: '('`},
		{"empty pattern", `pattern: '[0-9]{8}'`, `pattern: ''`},
		{"index without slash", `index: "{version}/"`, `index: "{version}"`},
		{"index with serial", `index: "{version}/"`, `index: "{serial}/"`},
		{"serial without serials", "    serials:\n      index: \"{version}/\"\n      directory: build-{serial}\n      pattern: '[0-9]{8}'\n", ""},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			content := strings.Replace(serialsYAML, tt.from, tt.to, 1)
			if content == serialsYAML {
				t.Fatalf("replacement of %q changed nothing", tt.from)
			}
			_, err := catalog.New(catalog.WithFile(writeCatalog(t, "c.yaml", content, key)))
			if !errors.Is(err, catalog.ErrInvalidCatalog) || !strings.Contains(err.Error(), "serial") {
				t.Fatalf("New: %v, want ErrInvalidCatalog about serials", err)
			}
		})
	}
}

func TestEntries(t *testing.T) {
	c := mustNew(t)
	entries := c.Entries()
	var names []string
	for _, e := range entries {
		names = append(names, e.Distro)
	}
	if !slices.Equal(names, []string{"alpine", "debian", "fedora", "ubuntu"}) {
		t.Fatalf("Entries() = %v", names)
	}
	ubuntu, err := c.Entry("Ubuntu")
	if err != nil {
		t.Fatal(err)
	}
	if !ubuntu.Serials || ubuntu.BootMode != catalog.BootKernel || !slices.Equal(ubuntu.Signatures, []catalog.SignatureKind{catalog.SignatureDetached}) ||
		!strings.Contains(ubuntu.Keyring, "Ubuntu") || ubuntu.Versions[0] != "25.10" || ubuntu.Codenames["24.04"] != "noble" {
		t.Errorf("ubuntu: %+v", ubuntu)
	}
	fedora, _ := c.Entry("fedora")
	if fedora.Serials || fedora.Keyring != "" || fedora.KeyHelp == "" || fedora.VersionPattern == "" {
		t.Errorf("fedora: %+v", fedora)
	}
	debian, _ := c.Entry("debian")
	if !debian.Serials || !slices.Equal(debian.Signatures, []catalog.SignatureKind{catalog.SignatureNone}) || !slices.Equal(debian.Versions, []string{"13", "12", "11"}) {
		t.Errorf("debian: %+v", debian)
	}
	alpine, _ := c.Entry("alpine")
	if alpine.Unsupported == nil || alpine.Unsupported.Reason == "" {
		t.Errorf("alpine: %+v", alpine)
	}
	if _, err := c.Entry("plan9"); !errors.Is(err, catalog.ErrUnknownDistro) {
		t.Errorf("Entry(plan9) = %v", err)
	}
}
