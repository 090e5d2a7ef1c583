package testmirror_test

import (
	"bytes"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/image"
)

// Each build has its own directory, content and signed manifests; the
// version's listing names them; release/ (latest/) copies the newest;
// AddSerial and RollBack move the newest.
func TestSerialDirectories(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithSerials("20260926", "20260901"),
		testmirror.WithDebian("12"), testmirror.WithDebianSerials("20260901-2211"),
		testmirror.WithDiskSize(4<<20, 256<<10), testmirror.WithKernelSize(8<<10, 8<<10))
	if got := m.Serials("ubuntu", "24.04"); !slices.Equal(got, []string{"20260926", "20260901"}) {
		t.Fatalf("Serials = %v", got)
	}
	disk := func(serial string) string {
		return m.SerialPath("ubuntu", "24.04", serial, image.ArchAMD64, image.RoleDisk)
	}
	if disk("20260926") != "releases/24.04/release-20260926/ubuntu-24.04-server-cloudimg-amd64.img" || m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk) != disk("20260926") {
		t.Errorf("paths %s, %s", disk("20260926"), m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk))
	}
	if m.Digest(disk("20260926")) == m.Digest(disk("20260901")) {
		t.Error("two builds have the same disk")
	}
	if m.Digest(disk("")) != m.Digest(disk("20260926")) {
		t.Error("release/ is not the newest build")
	}
	for _, serial := range []string{"20260926", "20260901", ""} {
		mp := m.SerialManifestPath("ubuntu", "24.04", serial, image.ArchAMD64, image.RoleKernel)
		_, text, _ := get(t, m.FileURL(mp), nil)
		_, sig, _ := get(t, m.FileURL(mp+".gpg"), nil)
		if _, err := m.Keyring().VerifyDetached(bytes.NewReader(text), sig); err != nil {
			t.Errorf("%s: %v", mp, err)
		}
	}
	resp, listing, err := get(t, m.URL+"releases/24.04/", nil)
	if err != nil || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("listing: %v %v", resp, err)
	}
	for _, want := range []string{`<a href="release-20260901/">release-20260901/</a>`, "2026-09-01 12:00", `<a href="release-20260926/">`, "2026-09-26 12:00", `<a href="release/">`} {
		if !strings.Contains(string(listing), want) {
			t.Errorf("listing lacks %q:\n%s", want, listing)
		}
	}
	deb := m.Path("debian", "12", image.ArchAMD64, image.RoleDisk)
	if deb != "images/cloud/bookworm/20260901-2211/debian-12-genericcloud-amd64-20260901-2211.qcow2" ||
		m.Digest(m.MovingPath("debian", "12", image.ArchAMD64, image.RoleDisk)) != m.Digest(deb) ||
		!strings.HasSuffix(m.MovingPath("debian", "12", image.ArchAMD64, image.RoleDisk), "/latest/debian-12-genericcloud-amd64.qcow2") {
		t.Errorf("debian %s, latest %s", deb, m.MovingPath("debian", "12", image.ArchAMD64, image.RoleDisk))
	}

	m.AddSerial("ubuntu", "24.04", "20261001")
	if got := m.Serials("ubuntu", "24.04"); got[0] != "20261001" || m.Digest(disk("")) != m.Digest(disk("20261001")) {
		t.Errorf("after AddSerial: %v", got)
	}
	old := disk("20261001")
	if gone := m.RollBack("ubuntu", "24.04"); gone != "20261001" {
		t.Fatalf("RollBack removed %s", gone)
	}
	if resp, _, _ := get(t, m.FileURL(old), nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("rolled-back build still served: %d", resp.StatusCode)
	}
	_, listing, _ = get(t, m.URL+"releases/24.04/", nil)
	if strings.Contains(string(listing), "release-20261001") || m.Digest(disk("")) != m.Digest(disk("20260926")) {
		t.Errorf("after RollBack the listing or release/ still has 20261001:\n%s", listing)
	}
}
