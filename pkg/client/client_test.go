package client_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

var noble = image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}

// newMirror serves Ubuntu 24.04 for amd64 with a small real qcow2 disk.
func newMirror(t *testing.T) *testmirror.Mirror {
	return testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(16<<20, 2<<20))
}

// startDeployment starts an embedded deployment on a fresh cache, its
// catalog on m, with retries short enough for failures to end quickly.
func startDeployment(t *testing.T, m *testmirror.Mirror, opts ...embedded.Option) *embedded.Deployment {
	t.Helper()
	base := []embedded.Option{
		embedded.WithCacheDir(t.TempDir()),
		embedded.WithResolveOptions(resolve.WithRetry(2, 10*time.Millisecond)),
		embedded.WithDownloadOptions(download.WithBackoff(10*time.Millisecond, 100*time.Millisecond),
			download.WithRetry(2, 10*time.Second), download.WithStallTimeout(2*time.Second)),
		embedded.WithRunnerOptions(stage.WithBackoff(testutil.Backoff(20*time.Millisecond, 200*time.Millisecond)), stage.WithMaxDeliver(2), stage.WithAckWait(5*time.Second)),
		embedded.WithShortPulls(),
		// An origin that sends nothing (a 503 for ever) ends a request in
		// seconds here, not the default 3 min.
		embedded.WithOriginTimeout(10 * time.Second),
	}
	if m != nil {
		base = append(base, embedded.WithCatalog(m.CatalogOptions()...))
	}
	d, err := embedded.Start(t.Context(), append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

func prepareCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestPrepare: a cold request comes back with verified files whose digests
// are the mirror's, signed by the mirror's key, with a generated request id.
func TestPrepare(t *testing.T) {
	t.Parallel()
	m := newMirror(t)
	d := startDeployment(t, m)
	res, err := d.Client().Prepare(prepareCtx(t), client.Request{Spec: image.Spec{Distro: "Ubuntu", Version: "24.04", Arch: image.ArchAMD64}, Format: image.FormatRaw})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != messages.ResultPrepared || res.RequestID == "" || res.Spec != noble || res.DiskFormat != image.FormatRaw {
		t.Fatalf("result %+v", res)
	}
	if res.Signer != m.Fingerprint() {
		t.Errorf("signer %q, want the mirror's key %q", res.Signer, m.Fingerprint())
	}
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs} {
		rel := m.Path("ubuntu", "24.04", image.ArchAMD64, role)
		f := res.Files[role]
		if f.Digest != m.Digest(rel) {
			t.Errorf("%s digest %s, want the published %s", role, f.Digest, m.Digest(rel))
		}
		if got := testutil.FileSHA256(t, f.Path); got != m.Digest(rel).Hex {
			t.Errorf("%s at %s has sha256 %s, want %s", role, f.Path, got, m.Digest(rel).Hex)
		}
	}
	diskRel := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	if disk := res.Files[image.RoleDisk]; disk.DerivedFrom != m.Digest(diskRel) || disk.Path != res.Disk {
		t.Errorf("disk %+v, want derived from %s at %s", disk, m.Digest(diskRel), res.Disk)
	}
	if got, want := testutil.FileSHA256(t, res.Disk), testutil.QemuRawSHA256(t, filepath.Join(m.Dir, filepath.FromSlash(diskRel))); got != want {
		t.Errorf("raw disk sha256 %s, want qemu-img's %s", got, want)
	}
}

// TestPrepareFailed: a failed result is returned with a *FailedError that
// says which stage failed, for which asset, why, and whether to retry.
func TestPrepareFailed(t *testing.T) {
	t.Parallel()
	m := newMirror(t)
	kernel := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleKernel)
	disk := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	tests := []struct {
		name      string
		spec      image.Spec
		fault     string // mirror path that fails
		status    int
		wantStage string
		wantAsset image.Role
		wantCause string
		wantRetry bool
		opts      []embedded.Option
	}{
		{name: "unsupported distro", spec: image.Spec{Distro: "alpine", Version: "3.20", Arch: image.ArchAMD64},
			wantStage: messages.StageResolver, wantCause: "alpine"},
		{name: "kernel gone", spec: noble, fault: kernel, status: 404,
			wantStage: messages.StageFetcher, wantAsset: image.RoleKernel, wantCause: "404"},
		{name: "disk unavailable", spec: noble, fault: disk, status: 503,
			wantStage: messages.StageFetcher, wantAsset: image.RoleDisk, wantCause: "503", wantRetry: true,
			// An origin answering 503 for ever fails the asset after the
			// origin timeout: a short one here.
			opts: []embedded.Option{embedded.WithOriginTimeout(time.Second)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fault != "" {
				m.SetFault(tc.fault, testmirror.Fault{Status: tc.status})
				t.Cleanup(func() { m.ClearFault(tc.fault) })
			}
			d := startDeployment(t, m, tc.opts...)
			res, err := d.Client().Prepare(prepareCtx(t), client.Request{RequestID: "failing", Spec: tc.spec})
			var failed *client.FailedError
			if !errors.As(err, &failed) {
				t.Fatalf("Prepare = %v, want a *client.FailedError", err)
			}
			if res.Status != messages.ResultFailed || res.RequestID != "failing" {
				t.Errorf("result %+v, want the failed result of request failing", res)
			}
			if failed.RequestID != "failing" || failed.Spec.Distro != tc.spec.Distro {
				t.Errorf("error names request %q for %s", failed.RequestID, failed.Spec)
			}
			if failed.Stage != tc.wantStage || failed.Asset != tc.wantAsset || failed.Retryable != tc.wantRetry {
				t.Errorf("failure: stage %q asset %q retryable %v, want %q %q %v (cause: %s)",
					failed.Stage, failed.Asset, failed.Retryable, tc.wantStage, tc.wantAsset, tc.wantRetry, failed.Cause)
			}
			if !strings.Contains(failed.Cause, tc.wantCause) || !strings.Contains(err.Error(), tc.wantCause) {
				t.Errorf("error %q does not mention %q", err, tc.wantCause)
			}
		})
	}
}

// TestRequestIDReused: an id already answered for another image or format
// is refused; asking again for the same image returns its one result.
func TestRequestIDReused(t *testing.T) {
	t.Parallel()
	m := newMirror(t)
	c := startDeployment(t, m).Client()
	ctx := prepareCtx(t)
	first, err := c.Prepare(ctx, client.Request{RequestID: "shared", Spec: noble, Format: image.FormatQCOW2})
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []client.Request{
		{RequestID: "shared", Spec: noble, Format: image.FormatRaw},
		{RequestID: "shared", Spec: image.Spec{Distro: "ubuntu", Version: "22.04", Arch: image.ArchAMD64}, Format: image.FormatQCOW2},
	} {
		_, err := c.Prepare(ctx, req)
		if !errors.Is(err, client.ErrRequestIDReused) {
			t.Errorf("reusing the id for %s %s: %v, want ErrRequestIDReused", req.Spec, req.Format, err)
		}
	}
	again, err := c.Prepare(ctx, client.Request{RequestID: "shared", Spec: noble})
	if err != nil {
		t.Fatal(err)
	}
	if !again.CompletedAt.Equal(first.CompletedAt) || again.Disk != first.Disk {
		t.Errorf("the same request again gave another result: %+v, first %+v", again, first)
	}
}

// TestProgress: both ways of receiving progress see the fetcher's reports
// for the request while it runs.
func TestProgress(t *testing.T) {
	t.Parallel()
	m := newMirror(t)
	tests := []struct {
		name string
		// option returns the option and a function that returns what it got.
		option func() (client.PrepareOption, func() []client.Progress)
	}{
		{"callback", func() (client.PrepareOption, func() []client.Progress) {
			var mu sync.Mutex
			var got []client.Progress
			return client.WithProgress(func(p client.Progress) {
					mu.Lock()
					defer mu.Unlock()
					got = append(got, p)
				}), func() []client.Progress {
					mu.Lock()
					defer mu.Unlock()
					return got
				}
		}},
		{"channel", func() (client.PrepareOption, func() []client.Progress) {
			ch := make(chan client.Progress, 1000)
			return client.WithProgressChan(ch), func() []client.Progress {
				var got []client.Progress
				for {
					select {
					case p := <-ch:
						got = append(got, p)
					default:
						return got
					}
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := startDeployment(t, m)
			opt, got := tc.option()
			res, err := d.Client().Prepare(prepareCtx(t), client.Request{Spec: noble, Format: image.FormatRaw}, opt)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[image.Role]bool{}
			for _, p := range got() {
				if p.RequestID != res.RequestID {
					t.Errorf("progress of request %q while waiting for %q", p.RequestID, res.RequestID)
				}
				if p.Done < 0 || (p.Total > 0 && p.Done > p.Total) {
					t.Errorf("progress %+v: done outside 0..total", p)
				}
				if p.Stage == messages.StageFetcher {
					seen[p.Asset] = true
				}
			}
			if !seen[image.RoleKernel] && !seen[image.RoleInitramfs] && !seen[image.RoleDisk] {
				t.Errorf("no fetch progress reported (got %d events)", len(got()))
			}
		})
	}
}

// TestNoProgressAfterReturn: Prepare returns only once the progress
// callback is done, so a caller may close its channel or free its state.
func TestNoProgressAfterReturn(t *testing.T) {
	t.Parallel()
	m := newMirror(t)
	d := startDeployment(t, m)
	const id = "progress-blocks"
	blocked, release := make(chan struct{}), make(chan struct{})
	var returned atomic.Bool
	var calls atomic.Int32
	progress := func(client.Progress) {
		if returned.Load() {
			t.Error("progress callback called after Prepare returned")
		}
		if calls.Add(1) == 1 {
			close(blocked)
			<-release
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := d.Client().Prepare(prepareCtx(t), client.Request{RequestID: id, Spec: noble}, client.WithProgress(progress))
		returned.Store(true)
		done <- err
	}()
	<-blocked
	// Wait until the result is out, while the callback is still blocked.
	js, err := jetstream.New(d.Conn())
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(prepareCtx(t), messages.StreamResults, jetstream.OrderedConsumerConfig{FilterSubjects: []string{messages.ResultSubject(id)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Next(jetstream.FetchContext(prepareCtx(t))); err != nil {
		t.Fatalf("no result: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Prepare returned (%v) while its progress callback was still running", err)
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestCancel: a caller whose context ends while it waits gets the context's
// error back at once, not after the client's next poll.
func TestCancel(t *testing.T) {
	t.Parallel()
	// No stages: the request is accepted and never answered.
	d := startDeployment(t, nil, embedded.WithStages())
	published := make(chan struct{}, 10)
	sub, err := d.Conn().Subscribe(messages.SubjectPrepare, func(*nats.Msg) { published <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := d.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) { return context.WithCancel(t.Context()) }, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(t.Context(), 300*time.Millisecond)
		}, context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := d.Client().Prepare(ctx, client.Request{Spec: noble})
				done <- err
			}()
			select {
			case <-published:
			case err := <-done:
				t.Fatalf("Prepare returned before publishing: %v", err)
			}
			if tc.want == context.Canceled {
				cancel()
			}
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Fatalf("Prepare = %v, want %v", err, tc.want)
				}
			case <-time.After(10 * time.Second):
				// The client polls in 30-second steps; returning only then
				// would leave the caller hanging after it gave up.
				t.Fatal("Prepare still waiting 10s after its context ended")
			}
		})
	}
}

// TestNoDeployment: a NATS server no stage ever ran on is named as such.
func TestNoDeployment(t *testing.T) {
	t.Parallel()
	_, nc, _ := testutil.EmbeddedJetStream(t)
	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(prepareCtx(t), client.Request{Spec: noble}); !errors.Is(err, client.ErrNoDeployment) {
		t.Fatalf("Prepare on a bare server = %v, want ErrNoDeployment", err)
	}
	// Requests that can never be valid are refused before anything is sent.
	for _, req := range []client.Request{
		{RequestID: "not an id", Spec: noble},
		{Spec: noble, Format: "vmdk"},
		{Spec: image.Spec{Distro: "ubuntu", Version: "../../etc"}},
	} {
		if _, err := c.Prepare(prepareCtx(t), req); err == nil || errors.Is(err, client.ErrNoDeployment) {
			t.Errorf("Prepare(%+v) = %v, want a validation error", req, err)
		}
	}
}

// TestDeploymentStartingWithTheClient: a deployment whose streams appear
// while the client already waits (compose up, a stream leader being
// elected) is used, not reported missing.
func TestDeploymentStartingWithTheClient(t *testing.T) {
	srv, nc, js := testutil.EmbeddedJetStream(t)
	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	before := srv.Subscriptions()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Prepare(ctx, client.Request{Spec: noble})
		done <- err
	}()
	// The client subscribes to its result subject, then asks for a stored
	// result: the streams are made only once it has.
	deadline := time.Now().Add(10 * time.Second)
	for srv.Subscriptions() == before {
		if time.Now().After(deadline) {
			t.Fatal("the client never subscribed to its result")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{}); err != nil {
		t.Fatal(err)
	}
	// No stage runs: the request is queued, and the client waits for its
	// result until its context ends.
	stream, err := js.Stream(ctx, messages.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	for {
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs > 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Prepare = %v before its request was queued, want it to wait for the deployment", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; errors.Is(err, client.ErrNoDeployment) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Prepare = %v, want it to have waited for its result until cancelled", err)
	}
}

// TestConnect: a client that dialled the deployment's URL itself works the
// same and closes its connection on Close.
func TestConnect(t *testing.T) {
	t.Parallel()
	d := startDeployment(t, nil, embedded.WithListen("127.0.0.1:0"))
	c, err := client.Connect(d.URL())
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Prepare(prepareCtx(t), client.Request{Spec: image.Spec{Distro: "alpine", Version: "3.20", Arch: image.ArchAMD64}})
	var failed *client.FailedError
	if !errors.As(err, &failed) || failed.Stage != messages.StageResolver {
		t.Fatalf("Prepare over the network = %v, want the resolver's refusal", err)
	}
	c.Close()
	if !c.Conn().IsClosed() {
		t.Error("Close left the client's own connection open")
	}
	if _, err := client.New(nil); err == nil {
		t.Error("New(nil) succeeded")
	}
	if _, err := client.Connect("nats://127.0.0.1:1", nats.MaxReconnects(0), nats.Timeout(time.Second)); err == nil {
		t.Error("Connect to a closed port succeeded")
	}
}

// TestPrepareRefusedBeforeSending: what docs/go-api.md says is caught before
// anything is sent is, with the error it names.
func TestPrepareRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	c := startDeployment(t, newMirror(t)).Client()
	for _, tc := range []struct {
		name string
		req  client.Request
		want error
	}{
		{"bad request id", client.Request{RequestID: "a.b", Spec: noble}, messages.ErrInvalidRequest},
		{"bad format", client.Request{Spec: noble, Format: "vmdk"}, messages.ErrInvalidRequest},
		{"bad target host", client.Request{Spec: noble, Target: "mac1.>"}, messages.ErrInvalidRequest},
		{"empty distro", client.Request{Spec: image.Spec{Version: "24.04", Arch: image.ArchAMD64}}, image.ErrInvalidSpec},
		{"distro with a slash", client.Request{Spec: image.Spec{Distro: "ubuntu/../x", Version: "24.04", Arch: image.ArchAMD64}}, image.ErrInvalidSpec},
		{"unknown arch", client.Request{Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "sparc"}}, image.ErrInvalidSpec},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if _, err := c.Prepare(ctx, tc.req); !errors.Is(err, tc.want) {
				t.Errorf("Prepare = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestUnmarkedStoredResultIsAskedAgain: a request whose stored result has
// no collector's marker (a deployment older than the marker, or a
// forgery) is not answered with it; the client asks again under a fresh
// publication id (the same request's is deduplicated as a repeat), and
// the deployment answers with its recorded result, marked.
func TestUnmarkedStoredResultIsAskedAgain(t *testing.T) {
	t.Parallel()
	m := newMirror(t)
	d := startDeployment(t, m)
	ctx := prepareCtx(t)
	req := client.Request{RequestID: "old-result", Spec: noble, Format: image.FormatRaw}
	first, err := d.Client().Prepare(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// As an older collector published it: the same result, no marker.
	old := first
	old.ResolvedFrom = "an older collector"
	data, err := messages.Encode(messages.TypeResult, &old)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(d.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, messages.ResultSubjectIn(d.Client().Namespace(), req.RequestID), data); err != nil {
		t.Fatal(err)
	}
	again, err := d.Client().Prepare(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if again.ResolvedFrom == old.ResolvedFrom || !again.CompletedAt.Equal(first.CompletedAt) {
		t.Errorf("asked again: %+v, want the recorded result %+v", again, first)
	}
}
