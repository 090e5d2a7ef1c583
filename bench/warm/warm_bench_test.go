// Package warm_bench times a warm `vmprep prepare` (everything cached): the
// answer from the store, through the embedded server and stages (what every
// warm run did before), and a process that does nothing (`vmprep version`),
// the floor. Each is a fresh process, as for a user scripting VM starts.
//
//	bash bench/warm/run.sh        # or: go test -run '^$' -bench . -benchtime 1x ./bench/warm/
//
// BENCH_ROUNDS (default 30) sets the rounds; VMPREP_BASELINE_BIN, if set, is
// another vmprep binary (say, built from an older commit) timed the same way.
package warm_bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/image"
)

// sample is one run: its wall time and the CPU it used (user + system).
type sample struct{ wall, cpu time.Duration }

func quantile(s []sample, q float64, of func(sample) time.Duration) time.Duration {
	d := make([]time.Duration, len(s))
	for i, x := range s {
		d[i] = of(x)
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(q*float64(len(d)-1)+0.5)]
}

func runOnce(b *testing.B, bin string, args []string, want string) sample {
	b.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s %v: %v\n%s", bin, args, err, out.String())
	}
	wall := time.Since(start)
	if !strings.Contains(out.String(), want) {
		b.Fatalf("%s %v: output lacks %q:\n%s", bin, args, want, out.String())
	}
	return sample{wall: wall, cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}
}

func BenchmarkWarmPrepare(b *testing.B) {
	rounds := testutil.EnvInt("BENCH_ROUNDS", 30)
	work := b.TempDir()
	bin := filepath.Join(work, "vmprep")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/vmprep/vmprep/cmd/vmprep").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	m := testmirror.New(b, testmirror.WithArches(image.ArchAMD64))
	cache := filepath.Join(work, "cache")
	base := []string{"prepare", "--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "amd64"}
	for _, format := range []string{"qcow2", "raw"} {
		runOnce(b, bin, append(append([]string{}, base...), "--format", format, "ubuntu", "24.04"), "disk:")
	}

	type contender struct {
		name, bin string
		args      func(round int) []string
		want      string
	}
	prepare := func(format string, extra ...string) func(int) []string {
		return func(int) []string {
			return append(append(append([]string{}, base...), extra...), "--format", format, "ubuntu", "24.04")
		}
	}
	fresh := func(format string) func(int) []string {
		return func(round int) []string {
			return prepare(format, "--request-id", fmt.Sprintf("bench-%s-%d-%d", format, time.Now().UnixNano(), round))(round)
		}
	}
	contenders := []contender{
		{"vmprep version (a process doing nothing: the floor)", bin, func(int) []string { return []string{"version"} }, "vmprep"},
		{"warm prepare, qcow2: answered from the store", bin, prepare("qcow2"), "from the cache"},
		{"warm prepare, raw: answered from the store", bin, prepare("raw"), "from the cache"},
		{"warm prepare, qcow2, --request-id: embedded server + stages", bin, fresh("qcow2"), "from the cache"},
		{"warm prepare, raw, --request-id: embedded server + stages", bin, fresh("raw"), "from the cache"},
	}
	if baseBin := os.Getenv("VMPREP_BASELINE_BIN"); baseBin != "" {
		// A cache of its own: another build may set JetStream up differently.
		baseArgs := func(format string) func(int) []string {
			return func(int) []string {
				return []string{"prepare", "--cache-dir", cache + "-baseline", "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "amd64", "--format", format, "ubuntu", "24.04"}
			}
		}
		for _, format := range []string{"qcow2", "raw"} {
			runOnce(b, baseBin, baseArgs(format)(0), "disk:")
		}
		contenders = append(contenders,
			contender{"baseline binary: warm prepare, qcow2", baseBin, baseArgs("qcow2"), "from the cache"},
			contender{"baseline binary: warm prepare, raw", baseBin, baseArgs("raw"), "from the cache"})
	}
	samples := make([][]sample, len(contenders))
	b.ResetTimer()
	for round := 0; round < rounds; round++ {
		// Rotate the order, so that no contender always follows the same one.
		for i := range contenders {
			k := (i + round) % len(contenders)
			c := contenders[k]
			samples[k] = append(samples[k], runOnce(b, c.bin, c.args(round), c.want))
		}
	}
	b.StopTimer()
	wall := func(s sample) time.Duration { return s.wall }
	cpu := func(s sample) time.Duration { return s.cpu }
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	fmt.Printf("\n%d rounds; wall time median and 90th percentile, CPU (user + system) median\n\n", rounds)
	fmt.Println("| run | wall median | wall p90 | CPU median |")
	fmt.Println("|---|---|---|---|")
	for i, c := range contenders {
		fmt.Printf("| %s | %.1f ms | %.1f ms | %.1f ms |\n", c.name, ms(quantile(samples[i], 0.5, wall)), ms(quantile(samples[i], 0.9, wall)), ms(quantile(samples[i], 0.5, cpu)))
	}
	b.ReportMetric(ms(quantile(samples[1], 0.5, wall)), "warm-ms")
	b.ReportMetric(ms(quantile(samples[3], 0.5, wall)), "pipeline-ms")
}

// BenchmarkFromStore is the warm answer's own work, in one process: open
// the store, build the catalog, read the stored resolution, check each
// file's stamp (and the qcow2 header), look up the raw conversion, and see
// that the view already points at the files. What a `vmprep prepare` adds
// to it is the process starting.
func BenchmarkFromStore(b *testing.B) {
	m := testmirror.New(b, testmirror.WithArches(image.ArchAMD64))
	ctx := context.Background()
	opts := []embedded.Option{embedded.WithCacheDir(b.TempDir()), embedded.WithShortPulls(), embedded.WithResolutionMaxAge(time.Hour),
		embedded.WithCatalog(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring()))}
	req := client.Request{Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}, Format: image.FormatRaw}
	d, err := embedded.Start(ctx, opts...)
	if err != nil {
		b.Fatal(err)
	}
	_, err = d.Client().Prepare(ctx, req)
	_ = d.Close()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok, err := embedded.FromStore(ctx, req, opts...); !ok || err != nil {
			b.Fatalf("FromStore: %v, %v", ok, err)
		}
	}
}
