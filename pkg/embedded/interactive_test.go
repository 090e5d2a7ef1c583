package embedded_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/resolve"
)

// TestInteractiveOfflineFailsFastSayingWhy: an interactive deployment whose
// catalog host does not resolve (offline, nothing cached) tells the
// requester it is resolving, then each retry with its cause, when and which
// attempt, and fails after 3 tries — one name lookup each, not the
// resolver's own retries on top of the runner's redeliveries.
func TestInteractiveOfflineFailsFastSayingWhy(t *testing.T) {
	t.Parallel()
	dns := testutil.StartNXDomain(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: dns.Dialer().DialContext}}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	d, err := embedded.Start(ctx, embedded.WithCacheDir(t.TempDir()), embedded.WithShortPulls(), embedded.WithInteractive(),
		embedded.WithCatalog(catalog.WithMirror("http://mirror.vmprep-test.example/")),
		embedded.WithResolveOptions(resolve.WithHTTPClient(hc)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	var mu sync.Mutex
	var events []messages.Progress
	_, err = d.Client().Prepare(ctx, client.Request{Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}},
		client.WithProgress(func(p client.Progress) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, p)
		}))
	var failed *client.FailedError
	if !errors.As(err, &failed) || !strings.Contains(failed.Failure.Cause, "no such host") || !failed.Failure.Retryable || failed.Failure.Stage != messages.StageResolver {
		t.Fatalf("Prepare = %v; want a retryable resolver failure saying no such host", err)
	}
	if !strings.Contains(failed.Failure.Cause, "gave up after 3 attempts") {
		t.Errorf("cause %q: want 3 attempts", failed.Failure.Cause)
	}
	if q := dns.Queries(); q > 6 {
		t.Errorf("%d DNS queries for 3 attempts: retried inside the resolver too", q)
	}

	// Progress is best effort (core NATS): give the last events a moment.
	want := func() bool {
		mu.Lock()
		defer mu.Unlock()
		retries := 0
		for _, p := range events {
			if p.Retrying != "" {
				retries++
			}
		}
		return retries >= 2
	}
	for deadline := time.Now().Add(5 * time.Second); !want() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) == 0 || events[0].Step != messages.StepResolve || events[0].Retrying != "" {
		t.Fatalf("first progress event %+v; want the resolve step starting", events)
	}
	var retries []messages.Progress
	for _, p := range events {
		if p.Retrying != "" {
			retries = append(retries, p)
		}
	}
	if len(retries) != 2 {
		t.Fatalf("%d retry events, want 2 (before attempts 2 and 3): %+v", len(retries), retries)
	}
	for i, p := range retries {
		wantIn := float64(i + 1) // 1 s, then 2 s
		if p.Step != messages.StepResolve || p.Stage != messages.StageResolver || p.Attempt != i+2 || p.MaxAttempts != 3 ||
			p.RetryInSeconds != wantIn || !strings.Contains(p.Retrying, "no such host") {
			t.Errorf("retry event %d: %+v; want attempt %d of 3 in %vs, saying no such host", i, p, i+2, wantIn)
		}
	}
}

// TestGivingUpQuotesTheRetry: a client that stops waiting while the
// resolver retries says what it was retrying.
func TestGivingUpQuotesTheRetry(t *testing.T) {
	t.Parallel()
	dns := testutil.StartNXDomain(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: dns.Dialer().DialContext}}
	d, err := embedded.Start(t.Context(), embedded.WithCacheDir(t.TempDir()), embedded.WithShortPulls(), embedded.WithInteractive(),
		embedded.WithCatalog(catalog.WithMirror("http://mirror.vmprep-test.example/")),
		embedded.WithResolveOptions(resolve.WithHTTPClient(hc)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, err = d.Client().Prepare(ctx, client.Request{Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}},
		client.WithProgress(func(p client.Progress) {
			if p.Retrying != "" {
				cancel() // give up at the first retry
			}
		}))
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "(last error: resolver: resolve ubuntu 24.04 amd64: ") ||
		!strings.Contains(err.Error(), "no such host") {
		t.Errorf("Prepare = %v; want it to quote the resolver's retry", err)
	}
}
