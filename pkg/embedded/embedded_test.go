package embedded_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

var noble = image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}

func start(t *testing.T, ctx context.Context, opts ...embedded.Option) *embedded.Deployment {
	t.Helper()
	d, err := embedded.Start(ctx, append([]embedded.Option{embedded.WithShortPulls()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func closeOK(t *testing.T, d *embedded.Deployment) {
	t.Helper()
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func prepareCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestJetStreamDirectoryLock: the first deployment on a cache directory
// uses <cache>/jetstream and locks it; another one meanwhile (in this
// process or another) gets a private directory, removed on Close; once the
// first is closed, the shared one is free again.
func TestJetStreamDirectoryLock(t *testing.T) {
	t.Parallel()
	cache := t.TempDir()
	shared := filepath.Join(cache, "jetstream")
	first := start(t, t.Context(), embedded.WithCacheDir(cache), embedded.WithStages())
	if first.JetStreamDir() != shared {
		t.Fatalf("first deployment uses %s, want %s", first.JetStreamDir(), shared)
	}
	second := start(t, t.Context(), embedded.WithCacheDir(cache), embedded.WithStages())
	private := second.JetStreamDir()
	if private == shared || filepath.Dir(private) != cache {
		t.Fatalf("second deployment uses %s, want a private directory in %s", private, cache)
	}
	if _, err := os.Stat(private); err != nil {
		t.Fatal(err)
	}
	closeOK(t, second)
	if _, err := os.Stat(private); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("private JetStream directory %s left after Close: %v", private, err)
	}
	if _, err := os.Stat(shared); err != nil {
		t.Errorf("the shared JetStream directory went with the second deployment: %v", err)
	}
	closeOK(t, first)
	third := start(t, t.Context(), embedded.WithCacheDir(cache), embedded.WithStages())
	defer closeOK(t, third)
	if third.JetStreamDir() != shared {
		t.Errorf("after the first closed, a new deployment uses %s, want %s", third.JetStreamDir(), shared)
	}
}

// TestExplicitJetStreamDir: a directory asked for is used as it is.
func TestExplicitJetStreamDir(t *testing.T) {
	t.Parallel()
	cache, js := t.TempDir(), filepath.Join(t.TempDir(), "js")
	d := start(t, t.Context(), embedded.WithCacheDir(cache), embedded.WithJetStreamDir(js), embedded.WithStages())
	if d.JetStreamDir() != js {
		t.Errorf("JetStreamDir %s, want %s", d.JetStreamDir(), js)
	}
	closeOK(t, d)
	if _, err := os.Stat(js); err != nil {
		t.Errorf("an explicit JetStream directory was removed: %v", err)
	}
}

// TestFailedStartReleasesTheDirectory: a configuration error is reported
// by Start and leaves the JetStream directory free.
func TestFailedStartReleasesTheDirectory(t *testing.T) {
	t.Parallel()
	cache := t.TempDir()
	_, err := embedded.Start(t.Context(), embedded.WithCacheDir(cache),
		embedded.WithCatalog(catalog.WithFile(filepath.Join(cache, "missing.yaml"))))
	if err == nil {
		t.Fatal("Start with a missing catalog file succeeded")
	}
	d := start(t, t.Context(), embedded.WithCacheDir(cache), embedded.WithStages())
	defer closeOK(t, d)
	if d.JetStreamDir() != filepath.Join(cache, "jetstream") {
		t.Errorf("after a failed Start the JetStream directory is still taken: got %s", d.JetStreamDir())
	}
}

// TestCloseAfterContextEnds: the stages stop with Start's context; Close
// afterwards still shuts the server down and releases the directory, and a
// second Close is harmless.
func TestCloseAfterContextEnds(t *testing.T) {
	t.Parallel()
	cache := t.TempDir()
	hold := start(t, t.Context(), embedded.WithCacheDir(cache), embedded.WithStages())
	defer closeOK(t, hold) // so that d gets a private directory to release
	ctx, cancel := context.WithCancel(t.Context())
	d := start(t, ctx, embedded.WithCacheDir(cache), embedded.WithListen("127.0.0.1:0"))
	url, private := d.URL(), d.JetStreamDir()
	cancel()
	closeOK(t, d)
	closeOK(t, d)
	if _, err := os.Stat(private); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("private JetStream directory %s left after Close: %v", private, err)
	}
	if c, err := client.Connect(url); err == nil {
		c.Close()
		t.Errorf("the server at %s still accepts clients after Close", url)
	}
}

// TestRestartKeepsResults: a deployment restarted on the same cache has the
// requests' results and the verified files: the same request id is answered
// again without fetching anything.
func TestRestartKeepsResults(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(16<<20, 2<<20))
	cache := t.TempDir()
	opts := []embedded.Option{embedded.WithCacheDir(cache), embedded.WithCatalog(m.CatalogOptions()...)}
	d := start(t, t.Context(), opts...)
	first, err := d.Client().Prepare(prepareCtx(t), client.Request{RequestID: "kept", Spec: noble})
	if err != nil {
		t.Fatal(err)
	}
	closeOK(t, d)
	requests := m.TotalContentRequests()

	d = start(t, t.Context(), opts...)
	defer closeOK(t, d)
	again, err := d.Client().Prepare(prepareCtx(t), client.Request{RequestID: "kept", Spec: noble})
	if err != nil {
		t.Fatal(err)
	}
	if again.Status != messages.ResultPrepared || !again.CompletedAt.Equal(first.CompletedAt) || again.Disk != first.Disk {
		t.Errorf("after a restart: %+v, want the first result %+v", again, first)
	}
	if n := m.TotalContentRequests() - requests; n != 0 {
		t.Errorf("the restarted deployment fetched %d files again", n)
	}
	if d.Store().Root() != cache {
		t.Errorf("Store().Root() = %s, want %s", d.Store().Root(), cache)
	}
}
