// Package multihost_bench measures a multi-host deployment (issue 7): 1, 10
// and 50 clients on hosts of their own ask one deployment (resolver and
// verifier on a gateway host, three fetchers on hosts of their own, all with
// --store nats:BUCKET) for the same image at once, from a local mirror over
// loopback. It prints per client-count the p50/p99 time per client, the
// origin bytes served per asset, the peak RSS and CPU of every process.
//
//	bash bench/multihost/run.sh       # or: go test -run '^$' -bench . -benchtime 1x ./bench/multihost/
//
// Every "host" is a mount namespace of its own (needs root and unshare), as
// in internal/e2e's multi-host tests; all of them share this machine's cores.
package multihost_bench

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

func envInts(key string, def []int) []int {
	var out []int
	for _, f := range strings.Fields(os.Getenv(key)) {
		if v, err := strconv.Atoi(f); err == nil && v > 0 {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return def
	}
	return out
}

// percentile is the nearest-rank percentile p (0-100) of d.
func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(k, len(s)-1))]
}

// deployment is one measured run: n clients against a fresh deployment.
type deployment struct {
	clients        int
	times          []time.Duration
	wall           time.Duration
	origin         map[image.Role]int64
	manifestReqs   int
	rss            map[string]int64 // peak RSS per process kind (highest instance)
	cpu            map[string]time.Duration
	clientRSS      int64
	load           string
	deliveredBytes int64
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

var roles = []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk}

// BenchmarkClients: for each client count (BENCH_CLIENTS, default "1 10 50"),
// in an order that rotates from round to round (BENCH_ROUNDS, default 2), a
// fresh deployment and n concurrent `vmprep prepare --nats` clients asking
// for the same qcow2 image (BENCH_FORMAT: qcow2 or raw), each with its own
// cache.
func BenchmarkClients(b *testing.B) {
	cluster.RequireNamespaces(b)
	rounds := testutil.EnvInt("BENCH_ROUNDS", 2)
	counts := envInts("BENCH_CLIENTS", []int{1, 10, 50})
	dataMiB := int64(testutil.EnvInt("BENCH_DISK_DATA_MIB", 256))
	kernelKiB, initrdKiB := testutil.EnvInt("BENCH_KERNEL_KIB", 14<<10), testutil.EnvInt("BENCH_INITRD_KIB", 60<<10)
	format := image.DiskFormat(os.Getenv("BENCH_FORMAT"))
	if format == "" {
		format = image.FormatQCOW2
	}
	m := testmirror.New(b, testmirror.WithArches(image.ArchAMD64),
		testmirror.WithDiskSize(2<<30, dataMiB<<20), testmirror.WithCompressedDisk(false),
		testmirror.WithKernelSize(kernelKiB<<10, initrdKiB<<10))
	size := map[image.Role]int64{}
	var imageBytes int64
	for _, role := range roles {
		size[role] = int64(len(m.Content(m.Path("ubuntu", "24.04", image.ArchAMD64, role))))
		imageBytes += size[role]
	}
	bin := cluster.Build(b)

	run := func(n int) deployment {
		before := map[image.Role]int64{}
		manifestsBefore := 0
		for _, role := range roles {
			before[role] = m.BytesServed(m.Path("ubuntu", "24.04", image.ArchAMD64, role))
			manifestsBefore += m.Requests(m.ManifestPath("ubuntu", "24.04", image.ArchAMD64, role))
		}
		c := cluster.New(b, bin)
		c.MirrorURL, c.KeyringFile = m.URL, m.KeyringFile()
		procs := map[string][]*cluster.Proc{}
		var hosts []*cluster.Host
		host := func(name string) *cluster.Host { h := c.Host(name); hosts = append(hosts, h); return h }
		gateway := host("gateway")
		procs["resolver"] = append(procs["resolver"], gateway.Stage("resolver", "--log-level", "warn"))
		procs["verifier"] = append(procs["verifier"], gateway.Stage("verifier", "--log-level", "warn"))
		for i := 1; i <= 3; i++ {
			procs["fetcher"] = append(procs["fetcher"], host(fmt.Sprintf("fetch%d", i)).Stage("fetcher", "--concurrency", "8", "--log-level", "warn"))
		}
		time.Sleep(time.Second) // let the consumers attach
		d := deployment{clients: n, load: loadavg(), rss: map[string]int64{}, cpu: map[string]time.Duration{}, origin: map[image.Role]int64{}}
		runs := make([]*cluster.PrepareRun, n)
		start := time.Now()
		for i := range n {
			runs[i] = host(fmt.Sprintf("client%02d", i)).Prepare(image.ArchAMD64, format)
		}
		var wg sync.WaitGroup
		results := make([]messages.Result, n)
		for i := range n {
			wg.Add(1)
			go func() { defer wg.Done(); results[i] = runs[i].Result(b, 20*time.Minute) }()
		}
		wg.Wait()
		d.wall = time.Since(start)
		for i, res := range results {
			if res.Status != messages.ResultPrepared {
				b.Fatalf("client %d: %s: %+v", i, res.Status, res.Failure)
			}
			d.times = append(d.times, runs[i].Elapsed())
			rss, cpu := runs[i].Usage()
			d.clientRSS = max(d.clientRSS, rss)
			d.cpu["clients"] += cpu
			for _, f := range res.Files {
				d.deliveredBytes += f.Size
			}
		}
		procs["serve"] = []*cluster.Proc{c.Server}
		for kind, ps := range procs {
			for _, p := range ps {
				d.rss[kind] = max(d.rss[kind], p.PeakRSS())
				d.cpu[kind] += p.CPUTime()
			}
		}
		for _, role := range roles {
			d.origin[role] = m.BytesServed(m.Path("ubuntu", "24.04", image.ArchAMD64, role)) - before[role]
			d.manifestReqs += m.Requests(m.ManifestPath("ubuntu", "24.04", image.ArchAMD64, role))
		}
		d.manifestReqs -= manifestsBefore
		c.StopAll()
		for _, h := range hosts {
			_ = os.RemoveAll(h.Dir)
		}
		return d
	}

	var all []deployment
	b.ResetTimer()
	for round := range rounds {
		order := append([]int(nil), counts...)
		if round%2 == 1 {
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		for _, n := range order {
			fmt.Fprintf(os.Stderr, "round %d: %d clients (load %s)\n", round+1, n, loadavg())
			all = append(all, run(n))
		}
	}
	b.StopTimer()

	fmt.Printf("\nimage: kernel %.1f MiB, initramfs %.1f MiB, disk %.1f MiB (qcow2, %d MiB of data); clients ask for %s; %d rounds; %d cores\n",
		mib(size[image.RoleKernel]), mib(size[image.RoleInitramfs]), mib(size[image.RoleDisk]), dataMiB, format, rounds, numCPU())
	fmt.Printf("%-7s %-15s %8s %8s %8s %9s %-22s %5s %-36s %-40s\n", "clients", "load at start", "p50", "p99", "wall", "MB/s out", "origin bytes/asset", "manif", "peak RSS MiB", "CPU s")
	for _, d := range all {
		var origin []string
		for _, role := range roles {
			origin = append(origin, fmt.Sprintf("%.2f×", float64(d.origin[role])/float64(size[role])))
		}
		rss := fmt.Sprintf("srv %.0f res %.0f fet %.0f ver %.0f cli %.0f", mib(d.rss["serve"]), mib(d.rss["resolver"]), mib(d.rss["fetcher"]), mib(d.rss["verifier"]), mib(d.clientRSS))
		cpu := fmt.Sprintf("srv %.1f res %.1f fet %.1f ver %.1f cli %.1f", d.cpu["serve"].Seconds(), d.cpu["resolver"].Seconds(), d.cpu["fetcher"].Seconds(), d.cpu["verifier"].Seconds(), d.cpu["clients"].Seconds())
		fmt.Printf("%-7d %-15s %7.2fs %7.2fs %7.2fs %9.0f %-22s %5d %-36s %-40s\n", d.clients, d.load,
			percentile(d.times, 50).Seconds(), percentile(d.times, 99).Seconds(), d.wall.Seconds(),
			float64(d.deliveredBytes)/d.wall.Seconds()/1e6, strings.Join(origin, " "), d.manifestReqs, rss, cpu)
	}
	// p99 of the largest count over p50 of one client, from the medians
	// across rounds.
	byN := map[int][]deployment{}
	for _, d := range all {
		byN[d.clients] = append(byN[d.clients], d)
	}
	if one, ok := byN[1]; ok {
		var base []time.Duration
		for _, d := range one {
			base = append(base, d.times...)
		}
		for _, n := range counts {
			var p99 []time.Duration
			for _, d := range byN[n] {
				p99 = append(p99, percentile(d.times, 99))
			}
			fmt.Printf("%d clients: median p99 %.2fs = %.2f× one client's median %.2fs (goal for 50: <= 2×)\n", n,
				percentile(p99, 50).Seconds(), percentile(p99, 50).Seconds()/percentile(base, 50).Seconds(), percentile(base, 50).Seconds())
		}
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "\nprocessor") + map[bool]int{true: 1, false: 0}[strings.HasPrefix(string(b), "processor")]
}
