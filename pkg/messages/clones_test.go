package messages

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/pkg/image"
)

func TestValidateClones(t *testing.T) {
	noble := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}
	req := func(format image.DiskFormat, target string, clones ...CloneRequest) PrepareRequest {
		return PrepareRequest{RequestID: "r1", Spec: noble, Format: format, Target: target, Clones: clones}
	}
	many := make([]CloneRequest, MaxClones+1)
	for i := range many {
		many[i].Name = "vm" + strings.Repeat("x", i)
	}
	for _, tc := range []struct {
		name    string
		req     PrepareRequest
		wantErr string // "" for valid
	}{
		{"no clones", req("", ""), ""},
		{"raw clones of a raw disk", req(image.FormatRaw, "mac1", CloneRequest{Name: "vm1.raw"}, CloneRequest{Name: "vm 2.img", Size: 1 << 30}), ""},
		{"overlay of a qcow2 disk", req("", "mac1", CloneRequest{Name: "vm1.qcow2"}), ""},
		{"overlay of a raw disk", req(image.FormatRaw, "mac1", CloneRequest{Name: "vm1.qcow2", Format: image.FormatQCOW2, Force: true}), ""},
		{"no target", req(image.FormatRaw, "", CloneRequest{Name: "vm1"}), "name it as the target"},
		{"client converts", func() PrepareRequest {
			r := req(image.FormatRaw, "mac1", CloneRequest{Name: "vm1"})
			r.ClientConverts = true
			return r
		}(), "not by a client"},
		{"too many", req(image.FormatRaw, "mac1", many...), "clones asked"},
		{"empty name", req(image.FormatRaw, "mac1", CloneRequest{}), "empty"},
		{"a path", req(image.FormatRaw, "mac1", CloneRequest{Name: "vms/vm1"}), "path separator"},
		{"an absolute path", req(image.FormatRaw, "mac1", CloneRequest{Name: "/etc/passwd"}), "path separator"},
		{"a Windows path", req(image.FormatRaw, "mac1", CloneRequest{Name: `..\vm1`}), "path separator"},
		{"dot dot", req(image.FormatRaw, "mac1", CloneRequest{Name: ".."}), "not a file name"},
		{"dot", req(image.FormatRaw, "mac1", CloneRequest{Name: "."}), "not a file name"},
		{"hidden", req(image.FormatRaw, "mac1", CloneRequest{Name: ".vm1.tmp-0"}), "starts with '.'"},
		{"control character", req(image.FormatRaw, "mac1", CloneRequest{Name: "vm\n1"}), "control character"},
		{"not UTF-8", req(image.FormatRaw, "mac1", CloneRequest{Name: "vm\xff"}), "not UTF-8"},
		{"too long", req(image.FormatRaw, "mac1", CloneRequest{Name: strings.Repeat("v", MaxCloneNameLen+1)}), "bytes long"},
		{"twice", req(image.FormatRaw, "mac1", CloneRequest{Name: "vm1"}, CloneRequest{Name: "vm1"}), "asked twice"},
		{"raw clone of a qcow2 disk", req(image.FormatQCOW2, "mac1", CloneRequest{Name: "vm1", Format: image.FormatRaw}), "needs a raw disk"},
		{"unknown format", req(image.FormatRaw, "mac1", CloneRequest{Name: "vm1", Format: "vmdk"}), "want raw or qcow2"},
		{"negative size", req(image.FormatRaw, "mac1", CloneRequest{Name: "vm1", Size: -1}), "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want ErrInvalidRequest saying %q", err, tc.wantErr)
			}
		})
	}
}

func TestFingerprintCoversClones(t *testing.T) {
	a := PrepareRequest{RequestID: "r1", Spec: image.Spec{Distro: "ubuntu", Version: "24.04"}, Target: "mac1"}
	b := a
	b.Clones = []CloneRequest{{Name: "vm1"}}
	c := a
	c.Clones = []CloneRequest{{Name: "vm1", Force: true}}
	if a.Fingerprint() == b.Fingerprint() || b.Fingerprint() == c.Fingerprint() {
		t.Errorf("fingerprints %s %s %s: clones must tell requests apart", a.Fingerprint(), b.Fingerprint(), c.Fingerprint())
	}
}
