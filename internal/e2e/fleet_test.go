package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
)

// fleetView is what `vmprep fleet status --json` prints, as far as read here.
type fleetView struct {
	Status map[string]map[string]fleet.Status `json:"status"`
}

// Five converter hosts, each in its own mount namespace, on one NATS
// server: a selection for host-* reaches the four matching hosts with the
// exact files and nothing on the fifth; a new build reaches every host
// after `fleet sync`, never more than --max-parallel 2 at once, and a host
// stopped during the rollout catches up once restarted; a pin to the old
// build rolls every host back without a download; a third build with
// --keep 1 frees the oldest everywhere except where a clone uses it;
// unwant frees the rest; the origin served each file once per build.
func TestFleetSelections(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	cluster.RequireNamespaces(t)
	fleetSelections(t, cluster.New(t, cluster.Build(t)))
}

// The same on a three-node cluster: the fleet bucket and every stream
// with three replicas.
func TestFleetSelectionsCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	cluster.RequireNamespaces(t)
	c, _ := cluster.NewNATSCluster(t, cluster.Build(t), 3)
	fleetSelections(t, c)
}

func fleetSelections(t *testing.T, c *cluster.Cluster) {
	const s1, s2, s3 = testmirror.DefaultUbuntuSerial, "20261201", "20261215"
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithSerials(s1), testmirror.WithDiskSize(64<<20, 16<<20))
	c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()
	vmprep := func(args ...string) string {
		t.Helper()
		full := append(args[:1:1], append([]string{"--nats", c.NATS}, args[1:]...)...)
		if args[0] == "fleet" {
			full = append(args[:2:2], append([]string{"--nats", c.NATS}, args[2:]...)...)
		}
		out, err := exec.Command(filepath.Join(c.Bin, "vmprep"), full...).CombinedOutput()
		if err != nil {
			t.Fatalf("vmprep %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	names := []string{"host-1", "host-2", "host-3", "host-4", "other"}
	setup := []string{"setup", "--store", "nats:" + cluster.Bucket, "--hosts", strings.Join(names, ",")}
	if c.Replicas > 0 {
		setup = append(setup, "--replicas", fmt.Sprint(c.Replicas))
	}
	vmprep(setup...)

	c.Host("gateway").Stage("resolver")
	c.Host("fetch").Stage("fetcher")
	c.Host("check").Stage("verifier")
	hosts := map[string]*cluster.Host{}
	converters := map[string]*cluster.Proc{}
	converterArgs := func(name string) []string {
		return []string{"--target", name, "--targeted-only", "--fleet-free-grace", "-1s"}
	}
	for _, name := range names {
		hosts[name] = c.Host(name)
		converters[name] = hosts[name].Stage("converter", converterArgs(name)...)
	}
	matching := names[:4]

	// Every status a host writes, in order: the rollout bound holds over the whole run.
	nc, err := nats.Connect(c.NATS)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	latest := map[string]fleet.State{}
	maxPulling := 0
	if _, err := nc.Subscribe("$KV.VMPREP_FLEET.status.>", func(msg *nats.Msg) {
		var st fleet.Status
		_ = json.Unmarshal(msg.Data, &st)
		mu.Lock()
		defer mu.Unlock()
		latest[msg.Subject] = st.State
		n := 0
		for _, s := range latest {
			if s == fleet.StatePulling {
				n++
			}
		}
		maxPulling = max(maxPulling, n)
	}); err != nil {
		t.Fatal(err)
	}

	want := func(extra ...string) string {
		out := vmprep(append(append([]string{"fleet", "want", "--hosts", "host-*", "--arch", "amd64", "--format", "raw", "--max-parallel", "2", "--keep", "1"}, extra...), "ubuntu", "24.04")...)
		id, _, _ := strings.Cut(out, "\t")
		return strings.TrimSpace(id)
	}
	id := want()
	status := func() fleetView {
		var v fleetView
		out := vmprep("fleet", "status", "--json")
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("fleet status --json: %v\n%s", err, out)
		}
		return v
	}
	allReady := func(serial string, keptAlso ...string) func() bool {
		return func() bool {
			v := status()
			for _, h := range matching {
				s := v.Status[h][id]
				if s.State != fleet.StateReady || s.Serial != serial || len(s.Kept) != len(keptAlso) {
					return false
				}
				for i, k := range keptAlso {
					if s.Kept[i].Serial != k {
						return false
					}
				}
			}
			return true
		}
	}
	view := func(h *cluster.Host) string {
		return h.Real(filepath.Join(c.MountPoint(), "images", "ubuntu", "24.04", "amd64"))
	}
	// linked is the file a link of a host's view names, as the test sees it.
	linked := func(h *cluster.Host, link string) string {
		t.Helper()
		target, err := os.Readlink(filepath.Join(view(h), link))
		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if !filepath.IsAbs(target) {
			return filepath.Clean(filepath.Join(view(h), target))
		}
		return h.Real(target)
	}
	// diskOf is the stored file a host's view names as its raw disk.
	diskOf := func(h *cluster.Host) string { return linked(h, "disk.raw") }
	checkHeld := func(serial string) {
		t.Helper()
		rawSum := testutil.QemuRawSHA256(t, filepath.Join(m.Dir, filepath.FromSlash(m.SerialPath("ubuntu", "24.04", serial, image.ArchAMD64, image.RoleDisk))))
		for _, name := range matching {
			v := view(hosts[name])
			if b, err := os.ReadFile(filepath.Join(v, "serial")); err != nil || strings.TrimSpace(string(b)) != serial {
				t.Errorf("%s: view serial %q (%v), want %s", name, b, err, serial)
			}
			for role, link := range map[image.Role]string{image.RoleKernel: "vmlinuz", image.RoleInitramfs: "initramfs"} {
				got, _ := os.ReadFile(linked(hosts[name], link))
				if string(got) != string(m.Content(m.SerialPath("ubuntu", "24.04", serial, image.ArchAMD64, role))) {
					t.Errorf("%s: %s is not build %s's", name, link, serial)
				}
			}
			if got := testutil.FileSHA256(t, diskOf(hosts[name])); got != rawSum {
				t.Errorf("%s: disk.raw is not build %s's disk", name, serial)
			}
		}
		if _, err := os.Stat(filepath.Join(hosts["other"].Dir, "images", "ubuntu")); !os.IsNotExist(err) {
			t.Errorf("other, which no selection names, holds images: %v", err)
		}
	}
	originOnce := func(serial string) {
		t.Helper()
		for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
			if n := m.Requests(m.SerialPath("ubuntu", "24.04", serial, image.ArchAMD64, role)); n != 1 {
				t.Errorf("the origin served the %s of build %s %d times, want once", role, serial, n)
			}
		}
	}

	vmprep("fleet", "sync")
	cluster.WaitFor(t, "every host-* holds "+s1, 4*time.Minute, allReady(s1))
	checkHeld(s1)

	// A new build, host-4 down while it rolls out: the others move, two at
	// a time; host-4 catches up once it is back.
	_ = converters["host-4"].Cmd.Process.Signal(syscall.SIGTERM)
	if _, ok := converters["host-4"].Wait(time.Minute); !ok {
		t.Fatal("host-4's converter did not stop")
	}
	m.AddSerial("ubuntu", "24.04", s2)
	vmprep("fleet", "sync")
	cluster.WaitFor(t, "host-1..3 hold "+s2, 4*time.Minute, func() bool {
		v := status()
		for _, h := range matching[:3] {
			if s := v.Status[h][id]; s.State != fleet.StateReady || s.Serial != s2 {
				return false
			}
		}
		return true
	})
	if s := status().Status["host-4"][id]; s.Serial != s1 {
		t.Errorf("host-4, stopped, reports %+v", s)
	}
	converters["host-4"] = hosts["host-4"].Stage("converter#again", converterArgs("host-4")...)
	cluster.WaitFor(t, "every host-* holds "+s2+", keeping "+s1, 4*time.Minute, allReady(s2, s1))
	checkHeld(s2)
	mu.Lock()
	if maxPulling > 2 || maxPulling == 0 {
		t.Errorf("%d hosts pulled at once; --max-parallel is 2 (and 0 means no status was seen)", maxPulling)
	}
	mu.Unlock()

	// Rollback: a pin to s1, which every host kept: no download.
	want("--serial", s1)
	cluster.WaitFor(t, "every host-* back at "+s1, 4*time.Minute, allReady(s1, s2))
	checkHeld(s1)
	originOnce(s1)
	originOnce(s2)
	oldDisks := map[string]string{}
	for _, name := range matching {
		oldDisks[name] = diskOf(hosts[name])
	}
	// A VM on host-1 uses s1's disk through a qcow2 overlay.
	clone := hosts["host-1"].Start("vmprep#clone", "clone", "--cache-dir", c.MountPoint(), "--format", "qcow2",
		"--from", filepath.Join(c.MountPoint(), "images", "ubuntu", "24.04", "amd64", "disk.raw"), filepath.Join(c.MountPoint(), "vm1.qcow2"))
	if st, ok := clone.Wait(time.Minute); !ok || !st.Success() {
		t.Fatalf("vmprep clone on host-1: %s", clone.Output())
	}

	// A third build, followed again, keep 1: s2 is kept, s1 freed — but
	// for host-1's disk, which the clone uses.
	want()
	m.AddSerial("ubuntu", "24.04", s3)
	vmprep("fleet", "sync")
	cluster.WaitFor(t, "every host-* holds "+s3+", keeping "+s2, 4*time.Minute, allReady(s3, s2))
	checkHeld(s3)
	originOnce(s3)
	for name, disk := range oldDisks {
		_, err := os.Stat(disk)
		if kept := err == nil; kept != (name == "host-1") {
			t.Errorf("%s: s1's disk kept %v (%v); only host-1's clone uses it", name, kept, err)
		}
	}
	ls, err := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", `mount --bind "$1" "$2" && "$3" cache ls --cache-dir "$2"`, "sh",
		hosts["host-2"].Dir, c.MountPoint(), filepath.Join(c.Bin, "vmprep")).CombinedOutput()
	if err != nil || !strings.Contains(string(ls), "build "+s2+": previous build 1 of 1 kept (keep 1)") || !strings.Contains(string(ls), "build "+s3+": current") {
		t.Errorf("cache ls on host-2 does not say why builds are kept (%v):\n%s", err, ls)
	}

	// Unwant: the builds and views go; the clone's base stays.
	newDisks := map[string]string{}
	for _, name := range matching {
		newDisks[name] = diskOf(hosts[name])
	}
	vmprep("fleet", "unwant", "--hosts", "host-*", "--arch", "amd64", "--format", "raw", "ubuntu", "24.04")
	cluster.WaitFor(t, "no host reports the selection", 2*time.Minute, func() bool {
		v := status()
		for _, h := range matching {
			if _, ok := v.Status[h][id]; ok {
				return false
			}
		}
		return true
	})
	for name, disk := range newDisks {
		if _, err := os.Stat(disk); err == nil {
			t.Errorf("%s: s3's disk is still there after unwant", name)
		}
		if _, err := os.Stat(view(hosts[name])); err == nil {
			t.Errorf("%s: the view is still there after unwant", name)
		}
	}
	if _, err := os.Stat(oldDisks["host-1"]); err != nil {
		t.Errorf("host-1: the disk its clone uses was freed: %v", err)
	}
	fmt.Fprintln(os.Stderr, vmprep("fleet", "status"))
}

// TestFleetRolloutBenchmark measures, with VMPREP_FLEET_BENCH_HOSTS=N
// converter hosts (each in its own mount namespace), the time from `vmprep
// fleet sync` of a new build to every host ready, and the origin bytes per
// build (1.00× is one download of each file for the whole fleet).
// Skipped unless the variable is set: it is a measurement (docs/BENCHMARKS.md).
func TestFleetRolloutBenchmark(t *testing.T) {
	n := testutil.EnvInt("VMPREP_FLEET_BENCH_HOSTS", 0)
	if n <= 0 {
		t.Skip("set VMPREP_FLEET_BENCH_HOSTS=20 to run")
	}
	cluster.RequireNamespaces(t)
	const s1, s2 = testmirror.DefaultUbuntuSerial, "20261201"
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithSerials(s1), testmirror.WithDiskSize(512<<20, 128<<20))
	c := cluster.New(t, cluster.Build(t))
	c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()
	vmprep := func(args ...string) string {
		t.Helper()
		full := append(args[:2:2], append([]string{"--nats", c.NATS}, args[2:]...)...)
		out, err := exec.Command(filepath.Join(c.Bin, "vmprep"), full...).CombinedOutput()
		if err != nil {
			t.Fatalf("vmprep %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	c.Host("gateway").Stage("resolver")
	c.Host("fetch").Stage("fetcher")
	c.Host("check").Stage("verifier")
	for i := range n {
		name := fmt.Sprintf("host-%02d", i+1)
		c.Host(name).Stage("converter", "--target", name, "--targeted-only")
	}
	out := vmprep("fleet", "want", "--hosts", "host-*", "--arch", "amd64", "--format", "qcow2", "ubuntu", "24.04")
	id, _, _ := strings.Cut(out, "\t")
	allAt := func(serial string) func() bool {
		return func() bool {
			var v fleetView
			if err := json.Unmarshal([]byte(vmprep("fleet", "status", "--json")), &v); err != nil {
				return false
			}
			ready := 0
			for h, sels := range v.Status {
				if s := sels[id]; strings.HasPrefix(h, "host-") && s.State == fleet.StateReady && s.Serial == serial {
					ready++
				}
			}
			return ready == n
		}
	}
	vmprep("fleet", "sync")
	cluster.WaitFor(t, "every host holds "+s1, 10*time.Minute, allAt(s1))

	m.AddSerial("ubuntu", "24.04", s2)
	start := time.Now()
	vmprep("fleet", "sync")
	cluster.WaitFor(t, "every host holds "+s2, 10*time.Minute, allAt(s2))
	elapsed := time.Since(start)
	var served, size int64
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
		rel := m.SerialPath("ubuntu", "24.04", s2, image.ArchAMD64, role)
		served += m.BytesServed(rel)
		size += int64(len(m.Content(rel)))
	}
	t.Logf("%d hosts: fleet sync of a new build to all ready in %s; origin bytes per build %.2f× (%d of %d)",
		n, elapsed.Round(10*time.Millisecond), float64(served)/float64(size), served, size)
	if served != size {
		t.Errorf("the origin served %d bytes for a build of %d", served, size)
	}
}
