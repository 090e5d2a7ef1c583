package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

func sha256File(t *testing.T, path string) string { return testutil.FileSHA256(t, path) }

func TestKilledWorkersResume(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img is needed (apt-get install qemu-utils): %v", err)
	}
	t0 := time.Now()
	step := func(what string) { t.Logf("%6.1fs %s", time.Since(t0).Seconds(), what) }
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64),
		testmirror.WithDiskSize(512<<20, 192<<20), testmirror.WithCompressedDisk(true))
	step("mirror built")
	c := cluster.New(t, cluster.Build(t))
	c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()
	step("binaries built, server up")
	c.Stage("resolver")
	fetchers := []*cluster.Proc{c.Stage("fetcher#1"), c.Stage("fetcher#2")}
	c.Stage("verifier")
	// No converter yet: the disk waits in the stream until we are watching.

	diskRel := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	diskSize := int64(len(m.Content(diskRel)))
	m.Throttle(diskSize / 4) // about four seconds for the disk
	run := c.Prepare(image.ArchAMD64, image.FormatRaw)

	// Kill -9 whichever fetcher is writing the disk once a good part has arrived.
	ingest := filepath.Join(c.Cache, "ingest") + string(os.PathSeparator)
	victim := cluster.WaitForHolder(t, "a fetcher writing the disk", fetchers, ingest,
		func() int64 { return m.BytesServed(diskRel) }, diskSize/4)
	victim.Kill9(t)
	step("fetcher killed")
	if served := m.BytesServed(diskRel); served >= diskSize {
		t.Fatalf("disk fully served (%d of %d bytes) before the kill; throttle too weak", served, diskSize)
	}
	fetchers = append(fetchers, c.Stage("fetcher#3"))
	m.Throttle(diskSize) // faster now

	// Now the converters: kill -9 the first one mid-conversion.
	derived := filepath.Join(c.Cache, "derived") + string(os.PathSeparator)
	conv1 := c.Stage("converter#1")
	cluster.WaitFor(t, "the converter writing the raw disk", 2*time.Minute, func() bool { return conv1.Holding(derived) })
	conv1.Kill9(t)
	step("converter killed")
	c.Stage("converter#2")
	c.Stage("converter#3")

	res := run.Result(t, 3*time.Minute)
	step("amd64 prepared")
	if res.Status != messages.ResultPrepared {
		t.Fatalf("status %s: %+v", res.Status, res.Failure)
	}
	// The download resumed instead of restarting: well under two full copies served.
	if total := m.BytesServed(diskRel); total > diskSize+diskSize/2 {
		t.Errorf("disk bytes served %d for a %d-byte file: the download restarted instead of resuming", total, diskSize)
	}
	if got, want := sha256File(t, res.Disk), testutil.QemuRawSHA256(t, filepath.Join(m.Dir, filepath.FromSlash(diskRel))); got != want {
		t.Errorf("raw disk sha256 %s, want qemu-img's %s", got, want)
	}
	if got := sha256File(t, res.Initramfs); got != m.Digest(m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleInitramfs)).Hex {
		t.Errorf("initramfs digest mismatch")
	}
	// No half-written file at a final path: every blob matches its name.
	blobs, _ := filepath.Glob(filepath.Join(c.Cache, "blobs", "sha256", "*"))
	for _, b := range blobs {
		if got := sha256File(t, b); got != filepath.Base(b) {
			t.Errorf("blob %s holds content %s", b, got)
		}
	}
	// The fetchers shared the work (each asset is one message; concurrency is 1):
	// the victim was downloading the disk, and some other fetcher finished assets.
	worked := 1
	for _, f := range fetchers {
		if f != victim && strings.Contains(f.Output(), "fetched") {
			worked++
		}
	}
	if worked < 2 {
		t.Errorf("only %d fetcher processes fetched anything; the work was not shared", worked)
	}

	// Warm, across processes: the same image again (raw and qcow2) needs no content.
	before := m.TotalContentRequests()
	for _, format := range []image.DiskFormat{image.FormatRaw, image.FormatQCOW2} {
		res := c.Prepare(image.ArchAMD64, format).Result(t, time.Minute)
		if res.Status != messages.ResultPrepared {
			t.Fatalf("warm %s: %+v", format, res.Failure)
		}
	}
	step("warm requests prepared")
	if after := m.TotalContentRequests(); after != before {
		t.Errorf("warm requests made %d content requests", after-before)
	}
}
