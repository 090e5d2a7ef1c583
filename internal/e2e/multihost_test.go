package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
)

// inCache maps a result's path to the file in h's own cache, failing the
// test for a path outside it.
func inCache(t *testing.T, h *cluster.Host) func(string) string {
	return func(p string) string {
		t.Helper()
		real := h.Real(p)
		if real == p {
			t.Fatalf("%s: path %q is not in the host's cache", h.Name, p)
		}
		return real
	}
}

// Stages on separate hosts, sharing nothing but NATS: a backend asks for a
// raw disk on mac1 and gets it there; a client asks for raw and qcow2 for
// itself and gets local files. Every host sees its own cache at the same
// path, so a path handed from one host to another would name the wrong file
// system.
func TestSeparateHosts(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	cluster.RequireNamespaces(t)
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithDiskSize(256<<20, 64<<20), testmirror.WithCompressedDisk(true))
	c := cluster.New(t, cluster.Build(t))
	c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()

	gateway, fetch, check, mac1 := c.Host("gateway"), c.Host("fetch"), c.Host("check"), c.Host("mac1")
	gateway.Stage("resolver")
	fetch.Stage("fetcher")
	check.Stage("verifier")
	mac1.Stage("converter", "--target", "mac1", "--targeted-only")

	backend := c.Host("backend")
	res := backend.Prepare(catalog.ArchAMD64, catalog.FormatRaw, "--target", "mac1").Result(t, 3*time.Minute)
	if res.Host != "mac1" || res.Target != "mac1" {
		t.Fatalf("result names host %q target %q, want mac1", res.Host, res.Target)
	}
	checkPrepared(t, mac1.Name, m, "24.04", catalog.ArchAMD64, res, inCache(t, mac1))
	if _, err := os.Stat(backend.Real(res.Disk)); err == nil {
		t.Errorf("the raw disk is on the backend's host too")
	}
	if _, err := os.Lstat(filepath.Join(mac1.Real(res.View), "disk.raw")); err != nil {
		t.Errorf("mac1's images view has no disk.raw: %v", err)
	}

	laptop := c.Host("laptop")
	for _, format := range []catalog.DiskFormat{catalog.FormatRaw, catalog.FormatQCOW2} {
		res := laptop.Prepare(catalog.ArchAMD64, format).Result(t, 3*time.Minute)
		checkPrepared(t, laptop.Name, m, "24.04", catalog.ArchAMD64, res, inCache(t, laptop))
		if res.DiskFormat != format {
			t.Errorf("asked for %s, got %s", format, res.DiskFormat)
		}
	}
	// The verifier streamed the objects; it keeps nothing. The fetcher
	// handed its downloads to the bucket and keeps nothing either.
	for _, h := range []*cluster.Host{check, fetch} {
		if blobs, _ := filepath.Glob(filepath.Join(h.Dir, "blobs", "sha256", "*")); len(blobs) > 0 {
			t.Errorf("%s keeps blobs %v", h.Name, blobs)
		}
	}
	// Each asset came from the origin once.
	for _, role := range []catalog.Role{catalog.RoleKernel, catalog.RoleInitramfs, catalog.RoleDisk} {
		rel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, role)
		if got, size := m.BytesServed(rel), int64(len(m.Content(rel))); got != size {
			t.Errorf("%s: origin served %d bytes of %d", role, got, size)
		}
	}
}

// kill -9 the fetcher holding the download lease: after the lease lapses
// another fetcher downloads the asset, and the request completes.
func TestLeaseHolderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	cluster.RequireNamespaces(t)
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithDiskSize(256<<20, 96<<20))
	c := cluster.New(t, cluster.Build(t))
	c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()
	gateway := c.Host("gateway")
	gateway.Stage("resolver")
	gateway.Stage("verifier")
	fetchers := []*cluster.Proc{c.Host("fetch1").Stage("fetcher"), c.Host("fetch2").Stage("fetcher")}

	diskRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	diskSize := int64(len(m.Content(diskRel)))
	m.Throttle(diskSize / 8) // about eight seconds for the disk
	laptop := c.Host("laptop")
	run := laptop.Prepare(catalog.ArchAMD64, catalog.FormatQCOW2)

	ingest := c.MountPoint() + string(os.PathSeparator) + "ingest" + string(os.PathSeparator)
	holder := cluster.WaitForHolder(t, "a fetcher downloading the disk", fetchers, ingest,
		func() int64 { return m.BytesServed(diskRel) }, diskSize/4)
	holder.Kill9(t)
	if served := m.BytesServed(diskRel); served >= diskSize/2 {
		t.Fatalf("%d of %d bytes served before the kill: throttle too weak for this test", served, diskSize)
	}
	m.Throttle(0)
	killedAt := time.Now()
	res := run.Result(t, 3*time.Minute)
	checkPrepared(t, laptop.Name, m, "24.04", catalog.ArchAMD64, res, inCache(t, laptop))
	if total := m.BytesServed(diskRel); total > diskSize+diskSize/2 {
		t.Errorf("origin served %d bytes for a %d-byte disk (more than 1.5x)", total, diskSize)
	}
	t.Logf("completed %s after the kill; origin served %.2fx the disk", time.Since(killedAt).Round(time.Second), float64(m.BytesServed(diskRel))/float64(diskSize))
	for _, f := range fetchers {
		if f != holder && !strings.Contains(f.Output(), "stored in the object store") {
			t.Errorf("the surviving fetcher did not store the disk:\n%s", f.Output())
		}
	}
}

// Fifty clients on fifty hosts ask for one image at once, over three
// fetchers and a throttled origin: every client gets exact local files and
// the origin serves each asset once.
func TestFiftyClients(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	cluster.RequireNamespaces(t)
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithDiskSize(64<<20, 24<<20))
	c := cluster.New(t, cluster.Build(t))
	c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()
	gateway := c.Host("gateway")
	gateway.Stage("resolver")
	gateway.Stage("verifier")
	for i := 1; i <= 3; i++ {
		c.Host(fmt.Sprintf("fetch%d", i)).Stage("fetcher", "--concurrency", "8")
	}
	diskRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	m.Throttle(int64(len(m.Content(diskRel))) / 3)

	const n = 50
	hosts := make([]*cluster.Host, n)
	runs := make([]*cluster.PrepareRun, n)
	for i := range n {
		hosts[i] = c.Host(fmt.Sprintf("client%02d", i))
		format := catalog.FormatQCOW2
		if i%2 == 1 {
			format = catalog.FormatRaw
		}
		runs[i] = hosts[i].Prepare(catalog.ArchAMD64, format)
	}
	var wg sync.WaitGroup
	results := make([]messages.Result, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = runs[i].Result(t, 5*time.Minute) }()
	}
	wg.Wait()
	for i := range n {
		checkPrepared(t, hosts[i].Name, m, "24.04", catalog.ArchAMD64, results[i], inCache(t, hosts[i]))
	}
	for _, role := range []catalog.Role{catalog.RoleKernel, catalog.RoleInitramfs, catalog.RoleDisk} {
		rel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, role)
		if got, size := m.BytesServed(rel), int64(len(m.Content(rel))); got != size {
			t.Errorf("%s: origin served %d bytes for a %d-byte file", role, got, size)
		}
	}
}

// A three-node NATS cluster with R3 streams and buckets: kill -9 a node
// while a request downloads; that request and the next complete, and the
// node rejoins.
func TestClusterNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	cluster.RequireNamespaces(t)
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithDiskSize(128<<20, 48<<20))
	c, nodes := cluster.NewNATSCluster(t, cluster.Build(t), 3)
	c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()
	gateway := c.Host("gateway")
	stages := []*cluster.Proc{gateway.Stage("resolver"), gateway.Stage("verifier"),
		c.Host("fetch1").Stage("fetcher"), c.Host("fetch2").Stage("fetcher")}
	// The node dies mid-download, not while the stages set up (a stage
	// started then waits it out too: the processes are up either way).
	for _, p := range stages {
		p.WaitServing(t, 2*time.Minute)
	}

	diskRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	diskSize := int64(len(m.Content(diskRel)))
	m.Throttle(diskSize / 6)
	laptop := c.Host("laptop")
	run := laptop.Prepare(catalog.ArchAMD64, catalog.FormatRaw)
	cluster.WaitFor(t, "the disk download under way", time.Minute, func() bool { return m.BytesServed(diskRel) > diskSize/5 })
	victim := nodes[0]
	victim.Kill9(t)
	t.Logf("killed %s", victim.Name)
	res := run.Result(t, 4*time.Minute)
	checkPrepared(t, laptop.Name, m, "24.04", catalog.ArchAMD64, res, inCache(t, laptop))

	m.Throttle(0)
	laptop2 := c.Host("laptop2")
	res2 := laptop2.Prepare(catalog.ArchAMD64, catalog.FormatQCOW2).Result(t, 3*time.Minute)
	checkPrepared(t, laptop2.Name, m, "24.04", catalog.ArchAMD64, res2, inCache(t, laptop2))

	victim.Restart(t)
	cluster.WaitFor(t, victim.Name+" rejoining the cluster", time.Minute, func() bool { return cluster.JetStreamReady(nodes) })
	laptop3 := c.Host("laptop3")
	res3 := laptop3.Prepare(catalog.ArchAMD64, catalog.FormatRaw).Result(t, 3*time.Minute)
	checkPrepared(t, laptop3.Name, m, "24.04", catalog.ArchAMD64, res3, inCache(t, laptop3))
}
