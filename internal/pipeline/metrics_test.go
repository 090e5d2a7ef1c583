package pipeline_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestMultiHostMetrics: each host's metrics count what it moved. Over a
// burst, the fetchers download each asset once from the origin, put it once
// into the object store and take a lease for each; the verifier reads each
// object back once; every delivery is settled.
func TestMultiHostMetrics(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(64<<20, 24<<20))
	f := newFleet(t, m)
	regs := map[string]*prometheus.Registry{}
	withMetrics := func(name string) func(*pipeline.Deps) {
		reg := prometheus.NewRegistry()
		regs[name] = reg
		return func(d *pipeline.Deps) {
			var err error
			if d.Metrics, err = metrics.New(reg); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector, messages.StageVerifier}, withMetrics("gateway"))
	f.host("fetch1", []string{messages.StageFetcher}, withMetrics("fetch1"))
	f.host("fetch2", []string{messages.StageFetcher}, withMetrics("fetch2"))
	client := f.conn()
	const n = 6
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := prepare(t, client, messages.PrepareRequest{
				RequestID: fmt.Sprintf("metrics-%d", i), Format: image.FormatQCOW2, ClientConverts: true,
				Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
			})
			if res.Status != messages.ResultPrepared {
				t.Errorf("request %d: %+v", i, res.Failure)
			}
		}()
	}
	wg.Wait()

	var total int64
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
		total += int64(len(m.Content(m.Path("ubuntu", "24.04", image.ArchAMD64, role))))
	}
	sum := func(name string, labels ...string) (v float64) {
		for _, h := range []string{"fetch1", "fetch2"} {
			x, _ := testutil.Gather(t, regs[h]).Value(name, labels...)
			v += x
		}
		return v
	}
	if got := sum("vmprep_origin_bytes_total"); int64(got) != total {
		t.Errorf("origin bytes %v, want %d (each asset once)", got, total)
	}
	if got := sum("vmprep_object_store_bytes_total", "direction", "put"); int64(got) != total {
		t.Errorf("object store put bytes %v, want %d", got, total)
	}
	// One lease per asset downloaded; a fetcher that looked just before an
	// object landed may also take the released lease, then find the object.
	if got := sum("vmprep_lease_wait_seconds", "outcome", "acquired"); got < 3 || got > 3*n {
		t.Errorf("leases acquired %v, want 3 to %d", got, 3*n)
	}
	if got := sum("vmprep_messages_handled_total", "stage", "fetcher", "outcome", "ok"); got != 3*n {
		t.Errorf("fetcher deliveries ok %v, want %d", got, 3*n)
	}
	gw := testutil.Gather(t, regs["gateway"])
	if got, _ := gw.Value("vmprep_object_store_bytes_total", "direction", "get"); int64(got) < total {
		t.Errorf("verifier read %v bytes back, want at least %d", got, total)
	}
	for _, s := range []string{"resolver", "verifier", "collector"} {
		// A client has its result once the collector publishes it; the
		// collector's handler (and the others', on late duplicates) still
		// returns and acks after that, so in flight drains shortly after.
		inFlight := func() float64 {
			v, _ := testutil.Gather(t, regs["gateway"]).Value("vmprep_in_flight", "stage", s)
			return v
		}
		for deadline := time.Now().Add(10 * time.Second); inFlight() != 0 && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if got := inFlight(); got != 0 {
			t.Errorf("%s in flight %v 10 s after the burst", s, got)
		}
		if got, _ := gw.Value("vmprep_messages_handled_total", "stage", s, "outcome", "ok"); got < n {
			t.Errorf("%s deliveries ok %v, want ≥ %d", s, got, n)
		}
	}
}
