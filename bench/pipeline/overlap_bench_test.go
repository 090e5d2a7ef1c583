package pipeline_bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/follow"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
)

// BenchmarkDiskOverlap: the disk alone, at the level of the domain packages
// (no NATS): download + hash + verify + convert one after the other, as the
// pipeline did, against the conversion following the download
// (place.RawDiskAhead), against curl + sha256sum + qemu-img convert.
//
//	BENCH_ROUNDS=3 go test -run '^$' -bench DiskOverlap -benchtime 1x ./bench/pipeline/
func BenchmarkDiskOverlap(b *testing.B) {
	rounds := testutil.EnvInt("BENCH_ROUNDS", 3)
	dataMiB := int64(testutil.EnvInt("BENCH_DISK_DATA_MIB", 1800))
	m := testmirror.New(b, testmirror.WithArches(image.ArchAMD64),
		testmirror.WithDiskSize(4<<30, dataMiB<<20), testmirror.WithCompressedDisk(true))
	rel := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	url, want := m.FileURL(rel), m.Digest(rel)
	fi, err := os.Stat(filepath.Join(m.Dir, filepath.FromSlash(rel)))
	if err != nil {
		b.Fatal(err)
	}
	size := fi.Size()
	work := b.TempDir()
	ctx := context.Background()

	var shell, sequential, overlapped, oneHash []time.Duration
	runShell := func(round int) {
		dir := filepath.Join(work, fmt.Sprintf("shell-%d", round))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		shell = append(shell, timeCmd(b, "bash", "-c", fmt.Sprintf(`set -e; cd %q
curl -sfo disk.img %q; sha256sum disk.img >/dev/null; qemu-img convert -f qcow2 -O raw disk.img disk.raw`, dir, url)))
		_ = os.RemoveAll(dir)
	}
	// run times one cold placement of the disk in a new store.
	// oneProcess: the fetcher's hash is taken in this process, as when the
	// stages share one (the single binary): the follower and the commit
	// take its word instead of hashing again.
	run := func(round int, name string, ahead, oneProcess bool) time.Duration {
		root := filepath.Join(work, fmt.Sprintf("%s-%d", name, round))
		st, err := store.Open(root)
		if err != nil {
			b.Fatal(err)
		}
		p := &place.Placer{Store: st}
		settle(b)
		start := time.Now()
		ingest := st.IngestPath(want)
		hashing := func() {}
		if oneProcess {
			hashing = st.HashingHere(ingest)
		}
		converted := make(chan error, 1)
		if ahead {
			go func() {
				_, err := p.RawDiskAhead(ctx, want, size, follow.Options{})
				converted <- err
			}()
		}
		res, err := download.New().Fetch(ctx, download.Request{URL: url, Dest: ingest, Expected: want, ExpectedSize: size, Name: "disk"})
		if err != nil {
			b.Fatal(err)
		}
		if oneProcess {
			if err := st.RecordHashed(ingest, res.Stat, res.SHA256, want); err != nil {
				b.Fatal(err)
			}
		}
		hashing()
		fetched := time.Since(start)
		blob, err := st.Commit(ctx, ingest, want, size) // the verifier
		if err != nil {
			b.Fatal(err)
		}
		committed := time.Since(start)
		if ahead {
			if err := <-converted; err != nil {
				b.Fatal(err)
			}
		}
		if _, err := p.RawDisk(ctx, blob); err != nil { // the converter
			b.Fatal(err)
		}
		d := time.Since(start)
		b.Logf("%s: fetched %.2fs, committed %.2fs, converted %.2fs", name, fetched.Seconds(), committed.Seconds(), d.Seconds())
		_ = os.RemoveAll(root)
		return d
	}
	runSequential := func(round int) { sequential = append(sequential, run(round, "sequential", false, false)) }
	runOverlapped := func(round int) { overlapped = append(overlapped, run(round, "overlapped", true, false)) }
	runOneHash := func(round int) { oneHash = append(oneHash, run(round, "one-hash", true, true)) }
	phases := []func(int){runShell, runSequential, runOverlapped, runOneHash}
	b.ResetTimer()
	for round := 0; round < rounds; round++ {
		for i := range phases {
			phases[(i+round)%len(phases)](round)
		}
	}
	b.StopTimer()
	ratio := func(a, b time.Duration) float64 { return a.Seconds() / b.Seconds() }
	fmt.Printf("\nload average at the end: %s", loadAverage())
	fmt.Printf("disk: %.0f MiB file (%d MiB of data in a 4 GiB compressed qcow2) over loopback; %d rounds, medians\n",
		float64(size)/(1<<20), dataMiB, rounds)
	fmt.Printf("%-62s %8.2fs\n", "shell: curl + sha256sum + qemu-img convert", median(shell).Seconds())
	fmt.Printf("%-62s %8.2fs  ratio %.2f×\n", "download+hash, commit (re-hash), convert: in sequence", median(sequential).Seconds(), ratio(median(sequential), median(shell)))
	fmt.Printf("%-62s %8.2fs  ratio %.2f×\n", "download+hash ∥ follow+hash+convert, commit (re-hash)", median(overlapped).Seconds(), ratio(median(overlapped), median(shell)))
	fmt.Printf("%-62s %8.2fs  ratio %.2f×\n", "one process: download+hash ∥ follow+convert, commit by rename", median(oneHash).Seconds(), ratio(median(oneHash), median(shell)))
}

// loadAverage is /proc/loadavg, to tell a run on a busy machine: the
// figures of one are not comparable with an idle one's.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown\n"
	}
	return string(b)
}
