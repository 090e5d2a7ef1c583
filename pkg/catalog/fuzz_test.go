package catalog

import (
	"errors"

	"strings"
	"testing"

	"github.com/vmprep/vmprep/pkg/image"
)

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"ubuntu", "24.04", "../x", "a..b", "UBUNTU", "\x00", "bookworm", "a/b", "ü", "\u212aey"} {
		f.Add(s, s, "amd64")
	}
	f.Fuzz(func(t *testing.T, distro, version, arch string) {
		got, err := image.Spec{Distro: distro, Version: version, Arch: image.Arch(arch)}.Normalize()
		if err != nil {
			return
		}
		for _, v := range []string{got.Distro, got.Version} {
			if v == "" || len(v) > image.MaxNameLen || strings.Contains(v, "..") || strings.ContainsAny(v, "/\\%?#:\x00\n ") || v[0] == '.' || v[0] == '-' {
				t.Fatalf("Normalize accepted %q", v)
			}
		}
		again, err := got.Normalize()
		if err != nil || again != got {
			t.Fatalf("Normalize not idempotent: %v → %v, %v", got, again, err)
		}
	})
}

// FuzzCatalogFile checks that hostile catalog files are rejected with an
// error, never a panic, and that accepted images plan without escaping base_url.
func FuzzCatalogFile(f *testing.F) {
	f.Add([]byte(builtinYAML), "yaml")
	f.Add([]byte(`{"images":[{"distro":"x","base_url":"https://h/","version_pattern":"[0-9]+","arches":{"amd64":"a"},"boot_mode":"firmware","assets":[{"role":"disk","url":"{version}/{name}","name_pattern":"d{{version}}","manifest":{"url":"{version}/S","signature":"none"}}]}]}`), "json")
	f.Add([]byte(`{"images":[{"distro":"x","base_url":"https://h/","arches":{"amd64":"a"},"boot_mode":"firmware","assets":[{"role":"disk","url":"{version}/d","manifest":{"url":"{version}/S","signature":"none"}}]}]}`), "json")
	f.Fuzz(func(t *testing.T, data []byte, format string) {
		file, err := ParseFile(data, format)
		if err != nil {
			return
		}
		c := &Catalog{entries: map[string]*entry{}, allowUnsigned: true}
		if err := c.add(file, "fuzz", ""); err != nil {
			return
		}
		for name, e := range c.entries {
			for _, version := range []string{"1", "1001"} { // 1001: beyond Go's repeat-count cap
				if src, err := c.Serials(image.Spec{Distro: name, Version: version, Arch: image.ArchAMD64}); err == nil && !strings.HasPrefix(src.IndexURL, e.BaseURL) {
					t.Fatalf("serials index %s escapes %s", src.IndexURL, e.BaseURL)
				}
				p, err := c.Plan(image.Spec{Distro: name, Version: version, Arch: image.ArchAMD64})
				if errors.Is(err, ErrSerialRequired) {
					p, err = c.Plan(image.Spec{Distro: name, Version: version, Arch: image.ArchAMD64, Serial: "1"})
				}
				if err != nil {
					continue
				}
				for _, a := range p.Assets {
					for _, u := range []string{a.URL, a.Manifest.URL, a.Manifest.IndexURL, a.Manifest.SignatureURL} {
						if u != "" && !strings.HasPrefix(u, e.BaseURL) {
							t.Fatalf("%s escapes %s", u, e.BaseURL)
						}
					}
				}
			}
		}
	})
}
