package digest

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	tests := []struct {
		in      string
		want    string
		wantErr error
	}{
		{"sha256:" + hex64, "sha256:" + hex64, nil},
		{"SHA256:" + strings.ToUpper(hex64), "sha256:" + hex64, nil},
		{"sha512:" + strings.Repeat("0f", 64), "sha512:" + strings.Repeat("0f", 64), nil},
		{"md5:d41d8cd98f00b204e9800998ecf8427e", "", ErrUnsupportedAlgorithm},
		{"sha256:" + hex64[:63], "", ErrInvalid},
		{"sha256:" + hex64[:63] + "g", "", ErrInvalid},
		{hex64, "", ErrInvalid},
	}
	for _, tt := range tests {
		d, err := Parse(tt.in)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Parse(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || d.String() != tt.want {
			t.Errorf("Parse(%q) = %q, %v; want %q", tt.in, d, err, tt.want)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	type wrap struct {
		D Digest `json:"d"`
	}
	in := wrap{D: Digest{Algorithm: SHA256, Hex: strings.Repeat("1", 64)}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"d":"sha256:` + strings.Repeat("1", 64) + `"}`; string(b) != want {
		t.Fatalf("marshal = %s, want %s", b, want)
	}
	var out wrap
	if err := json.Unmarshal(b, &out); err != nil || out != in {
		t.Fatalf("round trip = %+v, %v", out, err)
	}
	if err := json.Unmarshal([]byte(`{"d":"sha1:abc"}`), &out); err == nil {
		t.Fatal("sha1 accepted")
	}
}
