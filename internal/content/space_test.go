package content

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckFree(t *testing.T) {
	s := newStore(t)
	avail, total, err := diskSpace(s.Root())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		minFree       int64
		need          int64
		wantErr       bool
		wantPermanent bool // more than the file system holds: freeing space cannot help
	}{
		{"small", 0, 1, false, false},
		{"zero", 0, 0, false, false},
		{"more than the file system", 0, total + 1, true, true},
		{"reserve larger than the file system", total + 1, 1, true, true},
		{"need plus reserve exceed the file system", total / 2, total/2 + 1<<20, true, true},
		// Between what is free and what the file system holds: space may be
		// freed. (A margin of a GiB on each side keeps other writers on this
		// file system from changing the answer.)
		{"more than is free", 0, avail + (total-avail)/2, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.wantErr && !tc.wantPermanent && (tc.need-avail < 1<<30 || total-tc.need < 1<<30) {
				t.Skipf("file system too full or too empty (%d of %d bytes free) to tell", avail, total)
			}
			st, err := Open(s.Root(), WithMinFree(tc.minFree))
			if err != nil {
				t.Fatal(err)
			}
			err = st.CheckFree("", tc.need)
			if !tc.wantErr {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var se *SpaceError
			if !errors.Is(err, ErrInsufficientSpace) || !errors.As(err, &se) {
				t.Fatalf("CheckFree = %v, want *SpaceError", err)
			}
			msg := err.Error()
			for _, want := range []string{s.Root(), HumanSize(tc.need), "available"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q lacks %q", msg, want)
				}
			}
			if se.Available <= 0 || se.Need != tc.need || se.Total != total {
				t.Errorf("SpaceError %+v", se)
			}
			if se.Permanent() != tc.wantPermanent {
				t.Errorf("Permanent() = %v, want %v (%v)", se.Permanent(), tc.wantPermanent, err)
			}
			if tc.wantPermanent && !strings.Contains(msg, "whole") {
				t.Errorf("message %q does not say the file system is too small", msg)
			}
		})
	}
	if err := s.CheckFree(filepath.Join(s.Root(), "no", "such"), 1); err == nil || errors.Is(err, ErrInsufficientSpace) {
		t.Errorf("CheckFree(missing dir) = %v, want a plain error", err)
	}
}

func TestHumanSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536 << 20, "1.5 GiB"}, {5 << 40, "5.0 TiB"}} {
		if got := HumanSize(tc.n); got != tc.want {
			t.Errorf("HumanSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
