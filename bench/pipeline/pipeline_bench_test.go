// Package pipeline_bench compares vmprep prepare with the shell pipeline a
// user would otherwise write, on a local mirror served over loopback.
//
//	bash bench/pipeline/run.sh        # or: go test -run '^$' -bench . -benchtime 1x ./bench/pipeline/
package pipeline_bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// settle writes back what earlier phases left dirty, so that each timed
// phase starts from the same state instead of paying for the previous one.
func settle(b *testing.B) {
	b.Helper()
	if out, err := exec.Command("sync").CombinedOutput(); err != nil {
		b.Fatalf("sync: %v %s", err, out)
	}
	time.Sleep(time.Second)
}

func timeCmd(b *testing.B, name string, args ...string) time.Duration {
	b.Helper()
	settle(b)
	start := time.Now()
	cmd := exec.Command(name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return time.Since(start)
}

// BenchmarkPrepareVsShell: cold prepare --format raw (stages as separate
// processes, and the single binary) against curl + sha256sum + qemu-img
// convert; warm prepare against sha256sum of the cached files; peak RSS of
// each stage process.
func BenchmarkPrepareVsShell(b *testing.B) {
	for _, tool := range []string{"curl", "sha256sum", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s is needed: %v", tool, err)
		}
	}
	rounds := testutil.EnvInt("BENCH_ROUNDS", 3)
	dataMiB := int64(testutil.EnvInt("BENCH_DISK_DATA_MIB", 1800))
	m := testmirror.New(b, testmirror.WithArches(image.ArchAMD64),
		testmirror.WithDiskSize(4<<30, dataMiB<<20), testmirror.WithCompressedDisk(true),
		testmirror.WithKernelSize(14<<20, 60<<20))
	var mirrorBytes int64
	urls := map[image.Role]string{}
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
		rel := m.Path("ubuntu", "24.04", image.ArchAMD64, role)
		urls[role] = m.FileURL(rel)
		mirrorBytes += int64(len(m.Content(rel)))
	}
	bin := cluster.Build(b)
	work := b.TempDir()

	// VMPREP_BASELINE_BIN, if set, is another vmprep binary (say, built from
	// main before a change) whose cold single-binary prepare runs in the
	// same rotation: before and after in one run.
	baseline := os.Getenv("VMPREP_BASELINE_BIN")
	var shell, cold, single, singleBase, warm, warmHash []time.Duration
	rss := map[string]int64{}
	runShell := func(round int) {
		dir := filepath.Join(work, fmt.Sprintf("shell-%d", round))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		script := fmt.Sprintf(`set -e; cd %q
curl -sfo vmlinuz %q; curl -sfo initrd %q; curl -sfo disk.img %q
sha256sum vmlinuz initrd disk.img >/dev/null
qemu-img convert -f qcow2 -O raw disk.img disk.raw`, dir, urls[image.RoleKernel], urls[image.RoleInitramfs], urls[image.RoleDisk])
		shell = append(shell, timeCmd(b, "bash", "-c", script))
		_ = os.RemoveAll(dir)
	}
	runCluster := func(round int) {
		c := cluster.New(b, bin)
		c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()
		procs := map[string]*cluster.Proc{}
		for _, s := range []string{"resolver", "fetcher", "verifier", "converter"} {
			procs[s] = c.Stage(s, "--concurrency", "3", "--log-level", "warn")
		}
		time.Sleep(500 * time.Millisecond) // let the consumers attach
		settle(b)
		start := time.Now()
		res := c.Prepare(image.ArchAMD64, image.FormatRaw).Result(b, 10*time.Minute)
		cold = append(cold, time.Since(start))
		if res.Status != messages.ResultPrepared {
			b.Fatalf("cold prepare: %+v", res.Failure)
		}
		for s, p := range procs {
			if r := p.PeakRSS(); r > rss[s] {
				rss[s] = r
			}
		}
		c.StopAll()
		_ = os.RemoveAll(c.Cache)
	}
	runSingle := func(round int) {
		cache := filepath.Join(work, fmt.Sprintf("cache-%d", round))
		args := []string{"prepare", "--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(), "--format", "raw", "--arch", "amd64", "ubuntu", "24.04"}
		single = append(single, timeCmd(b, filepath.Join(bin, "vmprep"), args...))
		warm = append(warm, timeCmd(b, filepath.Join(bin, "vmprep"), args...))
		view := filepath.Join(cache, "images", "ubuntu", "24.04", "amd64")
		warmHash = append(warmHash, timeCmd(b, "sha256sum", filepath.Join(view, "vmlinuz"), filepath.Join(view, "initramfs"), filepath.Join(view, "disk.raw")))
		_ = os.RemoveAll(cache)
	}
	runBaseline := func(round int) {
		cache := filepath.Join(work, fmt.Sprintf("cache-base-%d", round))
		singleBase = append(singleBase, timeCmd(b, baseline, "prepare", "--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(),
			"--format", "raw", "--arch", "amd64", "ubuntu", "24.04"))
		_ = os.RemoveAll(cache)
	}
	// The order rotates from round to round, so no contender always pays for
	// the page-cache and writeback state the one before it left.
	phases := []func(int){runShell, runCluster, runSingle}
	if baseline != "" {
		phases = append(phases, runBaseline)
	}
	b.ResetTimer()
	for round := 0; round < rounds; round++ {
		for i := range phases {
			phases[(i+round)%len(phases)](round)
		}
	}
	b.StopTimer()

	ratio := func(a, b time.Duration) float64 { return a.Seconds() / b.Seconds() }
	fmt.Printf("\nload average at the end: %s", loadAverage())
	fmt.Printf("mirror: %.0f MiB over loopback (disk: %d MiB of data in a 4 GiB compressed qcow2); %d rounds, medians\n",
		float64(mirrorBytes)/(1<<20), dataMiB, rounds)
	fmt.Printf("%-58s %8.2fs\n", "shell: curl ×3 + sha256sum + qemu-img convert", median(shell).Seconds())
	fmt.Printf("%-58s %8.2fs  ratio %.2f×\n", "vmprep prepare --nats (4 stage processes), cold", median(cold).Seconds(), ratio(median(cold), median(shell)))
	fmt.Printf("%-58s %8.2fs  ratio %.2f×\n", "vmprep prepare (single binary, embedded NATS), cold", median(single).Seconds(), ratio(median(single), median(shell)))
	if baseline != "" {
		fmt.Printf("%-58s %8.2fs  ratio %.2f×\n", "baseline single binary ($VMPREP_BASELINE_BIN), cold", median(singleBase).Seconds(), ratio(median(singleBase), median(shell)))
	}
	fmt.Printf("%-58s %8.2fs\n", "sha256sum of the cached kernel, initramfs, disk.raw", median(warmHash).Seconds())
	fmt.Printf("%-58s %8.2fs  ratio %.2f×\n", "vmprep prepare (single binary), warm", median(warm).Seconds(), ratio(median(warm), median(warmHash)))
	for _, s := range []string{"resolver", "fetcher", "verifier", "converter"} {
		fmt.Printf("peak RSS %-10s %6.1f MiB\n", s, float64(rss[s])/(1<<20))
	}
	b.ReportMetric(ratio(median(cold), median(shell)), "cold-ratio")
	b.ReportMetric(ratio(median(warm), median(warmHash)), "warm-ratio")
}
