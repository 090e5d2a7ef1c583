package pipeline_test

import (
	"context"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
)

// outcome is one request's result and when it came.
type outcome struct {
	id  string
	res messages.Result
	err error
	at  time.Time
}

// submit sends requests for spec with the given ids, each in its own
// goroutine; their outcomes arrive on the returned channel.
func submit(t *testing.T, f *fleet, spec catalog.ImageSpec, ids ...string) <-chan outcome {
	t.Helper()
	out := make(chan outcome, len(ids))
	nc := f.conn()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			res, err := testutil.Prepare(ctx, nc, messages.PrepareRequest{RequestID: id, Spec: spec, Format: catalog.FormatQCOW2}, nil)
			out <- outcome{id, res, err, time.Now()}
		}()
	}
	go func() { wg.Wait(); close(out) }()
	return out
}

// originFleet is a deployment with an object store whose one fetcher host
// has two slots and the given origin timeout.
func originFleet(t *testing.T, m *testmirror.Mirror, originTimeout time.Duration) *fleet {
	f := newFleet(t, m)
	f.host("core", []string{messages.StageResolver, messages.StageVerifier, messages.StageConverter, messages.StageCollector}, nil)
	f.host("fetch1", []string{messages.StageFetcher}, func(d *pipeline.Deps) {
		d.Concurrency, d.OriginTimeout = 2, originTimeout
	})
	return f
}

// waitServing waits until the mirror has sent some of relPath: the download is under way.
func waitServing(t *testing.T, m *testmirror.Mirror, relPath string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for m.BytesServed(relPath) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the download of %s never started", relPath)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkOriginGone fails unless every outcome is a failed result naming url,
// and each came within bound of since (a loose bound: the check is that
// requests end, not how fast).
func checkOriginGone(t *testing.T, outs []outcome, url string, since time.Time, bound time.Duration) {
	t.Helper()
	for _, o := range outs {
		switch {
		case o.err != nil:
			t.Errorf("%s: %v", o.id, o.err)
		case o.res.Status != messages.ResultFailed || o.res.Failure == nil:
			t.Errorf("%s: status %s; want failed", o.id, o.res.Status)
		case !strings.Contains(o.res.Failure.Cause, url):
			t.Errorf("%s: failure %+v does not name %s", o.id, o.res.Failure, url)
		case o.at.Sub(since) > bound:
			t.Errorf("%s: ended %v after the origin stopped; want within %v", o.id, o.at.Sub(since).Round(time.Second), bound)
		}
	}
}

// An origin that stops answering mid-download ends every request waiting
// on the asset with a failure naming its URL within the origin timeout,
// while the fetcher's other slot keeps serving other assets.
func TestOriginGoneMidDownload(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithDiskSize(4<<20, 512<<10), testmirror.WithKernelSize(8<<10, 8<<10))
	const originTimeout = 15 * time.Second
	f := originFleet(t, m, originTimeout)
	amd64Disk := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	arm64 := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchARM64}

	m.Throttle(32 << 10)
	stuck := submit(t, f, noble, "a1", "a2", "a3", "a4")
	waitServing(t, m, amd64Disk)
	m.Halt(amd64Disk)
	halted := time.Now()
	m.Throttle(0)

	// Four requests wait on one download that will never end: the other
	// slot still serves another image meanwhile.
	other := <-submit(t, f, arm64, "b1")
	if other.err != nil || other.res.Status != messages.ResultPrepared {
		t.Fatalf("arm64 while amd64's disk is stuck: %v %+v", other.err, other.res.Failure)
	}
	var outs []outcome
	for o := range stuck {
		if o.at.Before(other.at) {
			t.Errorf("%s ended before the arm64 request: the stuck download did not hold things up long enough to test slots", o.id)
		}
		outs = append(outs, o)
	}
	checkOriginGone(t, outs, m.FileURL(amd64Disk), halted, originTimeout+time.Minute)
	if n := m.Requests(amd64Disk); n > 10 {
		t.Errorf("%d requests for the disk: one download per asset should make a few", n)
	}
}

// A mirror that stops (connections cut, then refused) mid-download ends
// every request with a failure naming the URL and the last cause.
func TestOriginStoppedMidDownload(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithDiskSize(4<<20, 512<<10), testmirror.WithKernelSize(8<<10, 8<<10))
	const originTimeout = 3 * time.Second
	f := originFleet(t, m, originTimeout)
	disk := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)

	m.Throttle(32 << 10)
	ch := submit(t, f, noble, "s1", "s2", "s3")
	waitServing(t, m, disk)
	m.Stop()
	stopped := time.Now()
	var outs []outcome
	for o := range ch {
		outs = append(outs, o)
	}
	// Whichever asset's download gives up first ends the request: the
	// failure names that asset's URL (the build's directory) and why.
	checkOriginGone(t, outs, m.FileURL(path.Dir(disk))+"/", stopped, originTimeout+time.Minute)
	for _, o := range outs {
		if c := o.res.Failure; c != nil && (!strings.Contains(c.Cause, "origin stopped answering") || !strings.Contains(c.Cause, "connection refused")) {
			t.Errorf("%s: failure %q does not say the origin stopped and the last cause (connection refused)", o.id, c.Cause)
		}
	}
}
