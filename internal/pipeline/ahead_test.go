package pipeline_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestConvertAheadInSharedCache: a cold raw prepare in a shared cache
// converts the disk while it downloads (the mirror is slowed so that the
// download takes a while), the converter then answers from the derived
// file, and the disk is qemu-img's conversion. A qcow2 request converts
// nothing ahead.
func TestConvertAheadInSharedCache(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(64<<20, 24<<20), testmirror.WithCompressedDisk(true))
	m.Throttle(16 << 20)
	spec := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}
	for _, tt := range []struct {
		format    image.DiskFormat
		wantAhead bool
	}{
		{image.FormatQCOW2, false},
		{image.FormatRaw, true},
	} {
		t.Run(string(tt.format), func(t *testing.T) {
			e := newEnv(t, m)
			var logs, storeLogs testutil.LockedBuffer
			e.deps.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
			// The stages share this process's store: the verifier commits
			// on the fetcher's own hash, and says so.
			st, err := store.Open(e.cache, content.WithLogger(slog.New(slog.NewTextHandler(&storeLogs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
			if err != nil {
				t.Fatal(err)
			}
			e.store, e.deps.Store = st, st
			emb := e.start(t)
			res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: client.NewRequestID(), Spec: spec, Format: tt.format})
			if res.Status != messages.ResultPrepared {
				t.Fatalf("status %s: %+v", res.Status, res.Failure)
			}
			diskRel := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
			want := m.Digest(diskRel).Hex
			if tt.format == image.FormatRaw {
				want = qemuRawSHA256(t, m, diskRel)
			}
			if got := fileSHA256(t, res.Disk); got != want {
				t.Errorf("disk %s sha256 %s, want %s", res.Disk, got, want)
			}
			emb.Close() // the log is complete
			if !strings.Contains(storeLogs.String(), `msg="store: committing on this process's own hash of the file" path=`+e.store.IngestPath(m.Digest(diskRel))) {
				t.Errorf("the disk was not committed on the fetcher's hash; store log:\n%s", storeLogs.String())
			}
			if got := strings.Contains(logs.String(), "converted while downloading"); got != tt.wantAhead {
				t.Errorf("converted while downloading: %v, want %v; log:\n%s", got, tt.wantAhead, logs.String())
			}
		})
	}
}
