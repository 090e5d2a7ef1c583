package catalog_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// TestTrustRoots: the roots of an image change with the keyring, the
// catalog entry's content and the mirror, and with nothing else.
func TestTrustRoots(t *testing.T) {
	noble := image.Spec{Distro: "ubuntu", Version: "noble", Arch: image.ArchAMD64}
	mybuntu := image.Spec{Distro: "mybuntu", Version: "bravo", Arch: image.ArchAMD64}
	fedora := image.Spec{Distro: "fedora", Version: "41", Arch: image.ArchAMD64}
	debian := image.Spec{Distro: "debian", Version: "13", Arch: image.ArchAMD64}
	key, other := signtest.NewKey(t, "k"), signtest.NewKey(t, "other")
	file := writeCatalog(t, "c.yaml", userYAML, key)
	sameContent := writeCatalog(t, "c.json", userJSON, key)
	edited := writeCatalog(t, "c.yaml", strings.Replace(userYAML, "disk-{version}.raw", "disk-{version}.img", 1), key)
	otherKey := writeCatalog(t, "c.yaml", userYAML, other)

	roots := func(spec image.Spec, opts ...catalog.Option) catalog.TrustRoots {
		t.Helper()
		r, err := mustNew(t, opts...).Roots(spec)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	builtin := roots(noble)
	if !slices.Contains(builtin.Keyring, ubuntuFingerprint) || builtin.Mirror != "https://cloud-images.ubuntu.com/" || !strings.HasPrefix(builtin.Catalog, "sha256:") {
		t.Fatalf("built-in ubuntu roots %+v", builtin)
	}
	if r := roots(image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64, Serial: "20260926"}); !r.Equal(builtin) {
		t.Error("a codename, its version or a serial changed the roots")
	}
	tests := []struct {
		name  string
		a, b  catalog.TrustRoots
		equal bool
	}{
		{"--keyring", builtin, roots(noble, catalog.WithKeyring(key.Keyring())), false},
		{"--mirror", builtin, roots(noble, catalog.WithMirror("http://127.0.0.1:8080/")), false},
		{"mirror with or without its slash", roots(noble, catalog.WithMirror("http://127.0.0.1:8080")), roots(noble, catalog.WithMirror("http://127.0.0.1:8080/")), true},
		{"another distro's entry in the file", builtin, roots(noble, catalog.WithFile(file)), true},
		{"the same entry as JSON", roots(mybuntu, catalog.WithFile(file)), roots(mybuntu, catalog.WithFile(sameContent)), true},
		{"an edited entry", roots(mybuntu, catalog.WithFile(file)), roots(mybuntu, catalog.WithFile(edited)), false},
		{"the entry's keyring file", roots(mybuntu, catalog.WithFile(file)), roots(mybuntu, catalog.WithFile(otherKey)), false},
		{"--allow-unsigned where no key is configured", roots(fedora), roots(fedora, catalog.WithAllowUnsigned(true)), false},
		{"--allow-unsigned where a key is configured", builtin, roots(noble, catalog.WithAllowUnsigned(true)), true},
		{"--allow-unsigned where nothing is signed", roots(debian), roots(debian, catalog.WithAllowUnsigned(true)), true},
	}
	for _, tc := range tests {
		if got := tc.a.Equal(tc.b); got != tc.equal {
			t.Errorf("%s: equal %v, want %v (%s / %s)", tc.name, got, tc.equal, tc.a, tc.b)
		}
		if got := tc.a.ID() == tc.b.ID(); got != tc.equal {
			t.Errorf("%s: same ID %v, want %v", tc.name, got, tc.equal)
		}
	}
	if _, err := mustNew(t).Roots(image.Spec{Distro: "plan9", Version: "4", Arch: image.ArchAMD64}); err == nil {
		t.Error("roots of an unknown distro")
	}
	d := catalog.Differences(&builtin, roots(noble, catalog.WithKeyring(key.Keyring()), catalog.WithMirror("http://127.0.0.1:8080/")))
	for _, want := range []string{ubuntuFingerprint + " (now keyring " + key.Fingerprint() + ")", "mirror https://cloud-images.ubuntu.com/ (now http://127.0.0.1:8080/)"} {
		if !strings.Contains(d, want) {
			t.Errorf("Differences %q lacks %q", d, want)
		}
	}
	if strings.Contains(d, "catalog entry") {
		t.Errorf("Differences %q names the catalog entry, which is the same", d)
	}
}
