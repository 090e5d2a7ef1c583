package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestShort(t *testing.T) {
	for _, tc := range []struct {
		info Info
		want string
	}{
		{Info{Version: "1.2.3", Revision: "abc"}, "1.2.3"},
		{Info{Version: "dev"}, "dev"},
		{Info{Version: "dev", Revision: "0123456789abcdef0123"}, "dev+0123456789ab"},
		{Info{Version: "dev", Revision: "0123456789abcdef0123", Modified: true}, "dev+0123456789ab-dirty"},
	} {
		if got := tc.info.Short(); got != tc.want {
			t.Errorf("%+v.Short() = %q, want %q", tc.info, got, tc.want)
		}
	}
}

func TestReadNamesTheToolchain(t *testing.T) {
	info := Read()
	if info.Go != runtime.Version() || info.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("Read() = %+v", info)
	}
	if s := info.String(); !strings.HasPrefix(s, "vmprep ") || !strings.Contains(s, "go "+runtime.Version()) {
		t.Errorf("String() = %q", s)
	}
}
