package messages

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    error
		wantErr bool
	}{
		{"ok", `{"v":1,"type":"prepare.request","request_id":"a","spec":{"distro":"ubuntu","version":"24.04"},"format":"raw"}`, nil, false},
		{"future version", `{"v":2,"type":"prepare.request","request_id":"a"}`, ErrUnknownVersion, true},
		{"no version", `{"type":"prepare.request","request_id":"a"}`, ErrUnknownVersion, true},
		{"wrong type", `{"v":1,"type":"asset","request_id":"a"}`, ErrInvalid, true},
		{"garbage", "\x00\x01", ErrInvalid, true},
		{"array", `[]`, ErrInvalid, true},
		{"too large", `{"v":1,"pad":"` + strings.Repeat("x", maxEventSize) + `"}`, ErrInvalid, true},
		{"field of the wrong type", `{"v":1,"type":"prepare.request","request_id":7}`, ErrInvalid, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req PrepareRequest
			err := Decode([]byte(tt.data), TypePrepareRequest, &req)
			if (err != nil) != tt.wantErr || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("Decode error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestEncodeStampsHeader(t *testing.T) {
	req := PrepareRequest{RequestID: "x", Spec: image.Spec{Distro: "ubuntu", Version: "24.04"}, Format: image.FormatRaw}
	b, err := Encode(TypePrepareRequest, &req)
	if err != nil {
		t.Fatal(err)
	}
	var back PrepareRequest
	if err := Decode(b, TypePrepareRequest, &back); err != nil || back.RequestID != "x" || back.V != Version {
		t.Fatalf("round trip: %+v, %v (%s)", back, err, b)
	}
}

func TestRequestIDs(t *testing.T) {
	for _, tt := range []struct {
		id string
		ok bool
	}{
		{"req-42", true}, {"A_b-9", true}, {strings.Repeat("a", 64), true},
		{"", false}, {strings.Repeat("a", 65), false}, {"a.b", false}, {"a*", false}, {"a>", false}, {"../x", false}, {"a b", false}, {"naïve", false}, {"tab\t", false}, {"Z9_-", true},
	} {
		if err := ValidateRequestID(tt.id); (err == nil) != tt.ok {
			t.Errorf("ValidateRequestID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
		_, ok := PeekRequestID([]byte(`{"v":99,"request_id":"` + tt.id + `"}`))
		if ok != tt.ok {
			t.Errorf("PeekRequestID(%q) ok = %v, want %v", tt.id, ok, tt.ok)
		}
	}
}

// A pinned serial is part of what a request asks for: the same id with
// another serial is another request (and another message id).
func TestFingerprintCoversSerial(t *testing.T) {
	a := PrepareRequest{RequestID: "r", Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}}
	b := a
	b.Spec.Serial = "20260926"
	c := b
	c.Spec.Serial = "20260901"
	if a.Fingerprint() == b.Fingerprint() || b.Fingerprint() == c.Fingerprint() {
		t.Fatalf("fingerprints %s %s %s do not tell the serials apart", a.Fingerprint(), b.Fingerprint(), c.Fingerprint())
	}
	if b2 := b; b2.Fingerprint() != b.Fingerprint() {
		t.Fatal("fingerprint is not stable")
	}
}

// TestFileLeavesOutEmptyDigests: a converted file has derived_from and no
// "digest": "" (and a published one the reverse), so that a client can
// tell them apart by the keys present.
func TestFileLeavesOutEmptyDigests(t *testing.T) {
	d := digest.Digest{Algorithm: digest.SHA256, Hex: strings.Repeat("ab", 32)}
	for _, tc := range []struct {
		name       string
		f          File
		want, lack string
	}{
		{"converted", File{Path: "/x", DerivedFrom: d, Size: 1}, `"derived_from":"sha256:`, `"digest"`},
		{"published", File{Path: "/x", Digest: d, Size: 1}, `"digest":"sha256:`, `"derived_from"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), tc.want) || strings.Contains(string(b), tc.lack) {
				t.Errorf("%s: want %s and no %s", b, tc.want, tc.lack)
			}
		})
	}
}
