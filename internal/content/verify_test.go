package content

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"

	"github.com/vmprep/vmprep/internal/testutil"
)

func TestVerify(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	good := commit(t, s, testutil.Fill("good", 5000))
	bad := commit(t, s, testutil.Fill("bad", 7000))
	var calls atomic.Int64
	dpath, err := s.PutDerived(ctx, DerivedKey{Source: good.SHA256, Converter: "c-1", Format: "raw"}, writeProducer(testutil.Fill("d", 900), &calls))
	if err != nil {
		t.Fatal(err)
	}
	// Clean store: everything OK.
	var results []VerifyResult
	if err := s.Verify(ctx, func(r VerifyResult) { results = append(results, r) }); err != nil {
		t.Fatalf("Verify clean store: %v", err)
	}
	if len(results) != 3 {
		t.Fatalf("results %+v", results)
	}
	// Damage one blob and the derived file. Verify ignores stamps, so even
	// a change that keeps mtime (restored with Chtimes) is found.
	fi := mustLstat(t, bad.Path)
	overwriteByte(t, bad.Path, 3)
	if err := os.Chtimes(bad.Path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	overwriteByte(t, dpath, 0)
	results = nil
	err = s.Verify(ctx, func(r VerifyResult) { results = append(results, r) })
	if !errors.Is(err, ErrVerifyFailed) {
		t.Fatalf("Verify = %v, want ErrVerifyFailed", err)
	}
	byPath := map[string]VerifyResult{}
	for _, r := range results {
		byPath[r.Path] = r
	}
	if r := byPath[good.Path]; !r.OK {
		t.Errorf("good blob: %+v", r)
	}
	for _, p := range []string{bad.Path, dpath} {
		r := byPath[p]
		if r.OK || !errors.Is(r.Err, ErrQuarantined) || r.QuarantinePath == "" || !testutil.Exists(r.QuarantinePath) || testutil.Exists(p) {
			t.Errorf("damaged %s: %+v", p, r)
		}
	}
	if err := s.Verify(ctx, nil); err != nil {
		t.Errorf("Verify after quarantine: %v", err)
	}
}
