package pipeline_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/download"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/resolve"
	"github.com/vmprep/vmprep/pkg/stage"
	"github.com/vmprep/vmprep/pkg/store"
)

func quietLogger() *slog.Logger {
	if os.Getenv("VMPREP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type env struct {
	mirror *testmirror.Mirror
	store  *store.Store
	cache  string
	deps   pipeline.Deps
}

func newEnv(t *testing.T, m *testmirror.Mirror) *env {
	t.Helper()
	cat, err := catalog.New(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring()))
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	st, err := store.Open(cache)
	if err != nil {
		t.Fatal(err)
	}
	log := quietLogger()
	return &env{
		mirror: m, store: st, cache: cache,
		deps: pipeline.Deps{
			Store:       st,
			Resolver:    resolve.New(cat, resolve.WithLogger(log), resolve.WithRetry(2, 10*time.Millisecond)),
			Downloader:  download.New(download.WithLogger(log), download.WithBackoff(10*time.Millisecond, 100*time.Millisecond), download.WithRetry(4, 10*time.Second), download.WithStallTimeout(2*time.Second)),
			Logger:      log,
			Concurrency: 3,
			// Always ask the mirror: tests of the cached resolution set MaxAge themselves.
			ResolutionMaxAge: 0,
			// Short pulls: stopping a stage waits for the pull in progress,
			// and a fleet stops several in turn.
			RunnerOptions: []stage.Option{stage.WithBackoff(testutil.Backoff(20*time.Millisecond, 200*time.Millisecond)), stage.WithMaxDeliver(3), stage.WithAckWait(5 * time.Second),
				stage.WithPullWait(200 * time.Millisecond)},
		},
	}
}

func (e *env) start(t *testing.T) *pipeline.Embedded {
	t.Helper()
	emb, err := pipeline.StartEmbedded(context.Background(), t.TempDir(), "", pipeline.AllStages, e.deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	return emb
}

func prepare(t *testing.T, nc *nats.Conn, req messages.PrepareRequest) messages.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := testutil.Prepare(ctx, nc, req, nil)
	if err != nil {
		t.Fatalf("prepare %+v: %v", req, err)
	}
	return res
}

// prepareUnchecked publishes req as a client in another language might,
// without the Go client's validation, and waits for its result.
func prepareUnchecked(t *testing.T, nc *nats.Conn, req messages.PrepareRequest) messages.Result {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	data, err := messages.Encode(messages.TypePrepareRequest, &req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), messages.SubjectPrepare, data); err != nil {
		t.Fatal(err)
	}
	return prepareResultOnly(t, nc, req.RequestID)
}

// prepareResultOnly waits for the stored result of a request published elsewhere.
func prepareResultOnly(t *testing.T, nc *nats.Conn, id string) messages.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, messages.StreamResults, jetstream.OrderedConsumerConfig{FilterSubjects: []string{messages.ResultSubject(id)}})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchContext(ctx))
	if err != nil {
		t.Fatalf("no result for %s: %v", id, err)
	}
	var res messages.Result
	if err := messages.Decode(msg.Data(), messages.TypeResult, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func fileSHA256(t *testing.T, path string) string { return testutil.FileSHA256(t, path) }

// qemuRawSHA256 converts the mirror's disk with qemu-img, the yardstick.
func qemuRawSHA256(t *testing.T, m *testmirror.Mirror, rel string) string {
	return testutil.QemuRawSHA256(t, filepath.Join(m.Dir, filepath.FromSlash(rel)))
}

func TestPrepareEndToEnd(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t)
	e := newEnv(t, m)
	emb := e.start(t)

	tests := []struct {
		arch   catalog.Arch
		format catalog.DiskFormat
	}{
		{catalog.ArchAMD64, catalog.FormatQCOW2},
		{catalog.ArchAMD64, catalog.FormatRaw},
		{catalog.ArchARM64, catalog.FormatRaw},
		{catalog.ArchARM64, catalog.FormatQCOW2},
	}
	for _, tt := range tests {
		t.Run(string(tt.arch)+"-"+string(tt.format), func(t *testing.T) {
			spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: tt.arch}
			res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: client.NewRequestID(), Spec: spec, Format: tt.format})
			if res.Status != messages.ResultPrepared {
				t.Fatalf("status %s: %+v", res.Status, res.Failure)
			}
			if res.Signer != m.Fingerprint() {
				t.Errorf("signer = %q, want %q", res.Signer, m.Fingerprint())
			}
			for role, path := range map[catalog.Role]string{catalog.RoleKernel: res.Kernel, catalog.RoleInitramfs: res.Initramfs} {
				rel := m.Path("ubuntu", "24.04", tt.arch, role)
				want := m.Digest(rel).Hex
				if content := m.Content(rel); role == catalog.RoleKernel && len(content) > 2 && content[0] == 0x1f && content[1] == 0x8b {
					// A gzip-compressed kernel is delivered unpacked, derived from the verified one.
					zr, err := gzip.NewReader(bytes.NewReader(content))
					if err != nil {
						t.Fatal(err)
					}
					raw, err := io.ReadAll(zr)
					if err != nil {
						t.Fatal(err)
					}
					sum := sha256.Sum256(raw)
					want = hex.EncodeToString(sum[:])
					if f := res.Files[role]; f.DerivedFrom != m.Digest(rel) || !strings.HasSuffix(path, "vmlinux") {
						t.Errorf("unpacked kernel: path %s, derived_from %s, want from %s", path, f.DerivedFrom, m.Digest(rel))
					}
				}
				if got := fileSHA256(t, path); got != want {
					t.Errorf("%s at %s has sha256 %s, want %s", role, path, got, want)
				}
			}
			diskRel := m.Path("ubuntu", "24.04", tt.arch, catalog.RoleDisk)
			if res.DiskFormat != tt.format {
				t.Errorf("disk format %s, want %s", res.DiskFormat, tt.format)
			}
			want := m.Digest(diskRel).Hex
			if tt.format == catalog.FormatRaw {
				want = qemuRawSHA256(t, m, diskRel)
			}
			if got := fileSHA256(t, res.Disk); got != want {
				t.Errorf("disk %s sha256 %s, want %s", res.Disk, got, want)
			}
			wantView := filepath.Join(e.cache, "images", "ubuntu", "24.04", string(tt.arch))
			if res.View != wantView {
				t.Errorf("view = %s, want %s", res.View, wantView)
			}
			// The result names immutable store files; the view links to the same ones.
			for _, p := range []string{res.Kernel, res.Initramfs, res.Disk} {
				if !strings.HasPrefix(p, filepath.Join(e.cache, "blobs")) && !strings.HasPrefix(p, filepath.Join(e.cache, "derived")) {
					t.Errorf("%s is not a content-store path", p)
				}
			}
			name := "disk.img"
			if tt.format == catalog.FormatRaw {
				name = "disk.raw"
			}
			if target, err := filepath.EvalSymlinks(filepath.Join(wantView, name)); err != nil || target != res.Disk {
				t.Errorf("view %s points at %s (%v), want %s", name, target, err, res.Disk)
			}
		})
	}

	// Warm: a second request for a prepared image fetches no content.
	before := m.TotalContentRequests()
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "warm-1", Spec: spec, Format: catalog.FormatRaw})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("warm: %+v", res.Failure)
	}
	if after := m.TotalContentRequests(); after != before {
		t.Errorf("warm prepare made %d content requests", after-before)
	}

	// The same request id again yields the same one result, without new work.
	again := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "warm-1", Spec: spec, Format: catalog.FormatRaw})
	if !again.CompletedAt.Equal(res.CompletedAt) || again.Disk != res.Disk {
		t.Errorf("repeated request id gave a different result: %+v vs %+v", again, res)
	}
	// And it was published once: the stream's last sequence for the subject is
	// its first (MaxMsgsPerSubject would hide a second publish from a count).
	js, _ := jetstream.New(emb.Conn)
	s, err := js.Stream(context.Background(), messages.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != info.State.Msgs {
		t.Errorf("results stream: %d messages stored but %d published: a result was published twice", info.State.Msgs, info.State.LastSeq)
	}
}

// TestRequestIDs: a reused id for another image is refused without touching
// the original request; a duplicate publish yields one result.
func TestRequestIDs(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	e := newEnv(t, m)
	emb := e.start(t)
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	first := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "shared-id", Spec: spec, Format: catalog.FormatQCOW2})
	if first.Status != messages.ResultPrepared {
		t.Fatalf("first: %+v", first.Failure)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := testutil.Prepare(ctx, emb.Conn, messages.PrepareRequest{RequestID: "shared-id", Spec: spec, Format: catalog.FormatRaw}, nil)
	if !errors.Is(err, client.ErrRequestIDReused) {
		t.Fatalf("reusing an id for another format: err = %v, want ErrRequestIDReused", err)
	}
	// The original's result is untouched and there is still exactly one.
	again := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "shared-id", Spec: spec, Format: catalog.FormatQCOW2})
	if again.Status != messages.ResultPrepared || !again.CompletedAt.Equal(first.CompletedAt) {
		t.Fatalf("original result changed: %+v", again)
	}
}

func TestWarmPrepareWorksOffline(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	e := newEnv(t, m)
	e.deps.ResolutionMaxAge = time.Hour
	emb := e.start(t)
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	if res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "cold", Spec: spec, Format: catalog.FormatQCOW2}); res.Status != messages.ResultPrepared {
		t.Fatalf("cold: %+v", res.Failure)
	}
	// The mirror now answers nothing but errors: the warm request must not need it.
	for _, role := range []catalog.Role{catalog.RoleKernel, catalog.RoleInitramfs, catalog.RoleDisk} {
		m.SetFault(m.Path("ubuntu", "24.04", catalog.ArchAMD64, role), testmirror.Fault{Status: 500})
		m.SetFault(m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, role), testmirror.Fault{Status: 500})
	}
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "warm", Spec: spec, Format: catalog.FormatQCOW2})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("warm offline: %+v", res.Failure)
	}
	if res.ResolvedFrom != messages.ResolvedFromCache {
		t.Errorf("resolved_from = %q, want cache", res.ResolvedFrom)
	}
}

func TestFailuresEndAsResults(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	e := newEnv(t, m)
	emb := e.start(t)
	amd := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}

	t.Run("transient 503s are retried", func(t *testing.T) {
		disk := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
		m.SetFault(disk, testmirror.Fault{Status: 503, Times: 3})
		defer m.ClearFault(disk)
		res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "flaky", Spec: amd, Format: catalog.FormatQCOW2})
		if res.Status != messages.ResultPrepared {
			t.Fatalf("want prepared after retries: %+v", res.Failure)
		}
	})

	tests := []struct {
		name      string
		req       messages.PrepareRequest
		setup     func()
		wantStage string
		wantCause []string
	}{
		{
			name:      "alpine is unsupported",
			req:       messages.PrepareRequest{RequestID: "alpine", Spec: catalog.ImageSpec{Distro: "alpine", Version: "3.20", Arch: "amd64"}, Format: catalog.FormatQCOW2},
			wantStage: messages.StageResolver, wantCause: []string{"alpine"},
		},
		{
			name:      "unknown distro lists supported ones",
			req:       messages.PrepareRequest{RequestID: "gentoo", Spec: catalog.ImageSpec{Distro: "gentoo", Version: "1", Arch: "amd64"}, Format: catalog.FormatQCOW2},
			wantStage: messages.StageResolver, wantCause: []string{"gentoo", "ubuntu"},
		},
		{
			name:      "traversal in the version",
			req:       messages.PrepareRequest{RequestID: "traverse", Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "../../etc", Arch: "amd64"}, Format: catalog.FormatQCOW2},
			wantStage: messages.StageResolver, wantCause: []string{"version"},
		},
		{
			name:      "bad format",
			req:       messages.PrepareRequest{RequestID: "badformat", Spec: amd, Format: "vmdk"},
			wantStage: messages.StageResolver, wantCause: []string{"vmdk"},
		},
		{
			name: "kernel 404",
			req:  messages.PrepareRequest{RequestID: "k404", Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"}, Format: catalog.FormatQCOW2},
			setup: func() {
				m.SetFault(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleKernel), testmirror.Fault{Status: 404})
			},
			wantStage: messages.StageFetcher, wantCause: []string{"404", "vmlinuz"},
		},
		{
			name: "tampered disk",
			req:  messages.PrepareRequest{RequestID: "tampered", Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"}, Format: catalog.FormatQCOW2},
			setup: func() {
				m.ClearFault(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleKernel))
				m.SetFault(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk), testmirror.Fault{WrongBytes: true})
			},
			wantStage: messages.StageFetcher, wantCause: []string{"digest"},
		},
	}
	// A fresh store for the fetch-failure cases: the earlier subtest cached everything.
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			emb := emb
			if tt.wantStage == messages.StageFetcher {
				e2 := newEnv(t, m)
				emb = e2.start(t)
			}
			res := prepareUnchecked(t, emb.Conn, tt.req)
			if res.Status != messages.ResultFailed || res.Failure == nil {
				t.Fatalf("status %s, want failed", res.Status)
			}
			if res.Failure.Stage != tt.wantStage {
				t.Errorf("failed in stage %q, want %q (%s)", res.Failure.Stage, tt.wantStage, res.Failure.Cause)
			}
			for _, w := range tt.wantCause {
				if !strings.Contains(strings.ToLower(res.Failure.Cause), strings.ToLower(w)) {
					t.Errorf("cause %q does not mention %q", res.Failure.Cause, w)
				}
			}
		})
	}
}

func TestPoisonMessagesAreDeadLettered(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	e := newEnv(t, m)
	emb := e.start(t)
	js, err := jetstream.New(emb.Conn)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	poison := []struct {
		subject string
		data    string
	}{
		{messages.SubjectPrepare, "\x00\xffgarbage"},
		{messages.SubjectPrepare, `{"v":99,"type":"prepare.request","request_id":"future","spec":{"distro":"ubuntu","version":"24.04","arch":"amd64","serial":"20261120","flavour":"minimal"},"format":"raw","priority":{"new":"field"}}`},
		{messages.SubjectPrepare, `{"v":1,"type":"prepare.request","request_id":"../../x","spec":{"distro":"ubuntu","version":"24.04"},"format":"raw"}`},
		{messages.SubjectFetch, `{"v":1,"type":"asset","request_id":"nofetch","asset":{"role":"kernel"}}`},
		{messages.SubjectVerify, `{"v":1,"type":"asset","request_id":"escape","asset":{"role":"disk","digest":"sha256:` + strings.Repeat("a", 64) + `"},"ingest":"../../../etc/passwd"}`},
		{messages.DoneSubject(messages.StageVerifier), `[]`},
		{messages.SubjectPrepare, "{" + strings.Repeat("not json ", 100<<10)}, // 900 KiB: its dead letter must still fit

	}
	for _, p := range poison {
		if _, err := js.Publish(ctx, p.subject, []byte(p.data)); err != nil {
			t.Fatal(err)
		}
	}
	// The stages keep serving.
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "after-poison", Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"}, Format: catalog.FormatQCOW2})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("after poison: %+v", res.Failure)
	}
	s, err := js.Stream(ctx, messages.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs >= uint64(len(poison)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters, want %d", info.State.Msgs, len(poison))
		}
		time.Sleep(50 * time.Millisecond)
	}
	cons, err := js.OrderedConsumer(ctx, messages.StreamDead, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	for i := 0; i < len(poison); i++ {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var dl messages.DeadLetter
		if err := messages.Decode(msg.Data(), messages.TypeDeadLetter, &dl); err != nil {
			t.Fatalf("dead letter unreadable: %v", err)
		}
		if dl.Reason == "" || dl.Stage == "" || dl.SHA256 == "" || dl.Size == 0 {
			t.Errorf("dead letter without reason, stage or digest: %+v", dl)
		}
		if len(dl.Data) > messages.DeadLetterDataMax {
			t.Errorf("dead letter keeps %d bytes of the original", len(dl.Data))
		}
		reasons[dl.RequestID] = dl.Reason
	}
	// The escape attempt was refused for its path, before anything was read.
	if !strings.Contains(reasons["escape"], "ingest") {
		t.Errorf("escape attempt: dead letter reason %q does not name the ingest path", reasons["escape"])
	}
	// A request in a future schema version is refused, and its requester is told.
	res = prepareResultOnly(t, emb.Conn, "future")
	if res.Status != messages.ResultFailed || res.Failure == nil || !strings.Contains(res.Failure.Cause, "v=99") {
		t.Errorf("future-version request: %+v", res.Failure)
	}
	// Issue 16, item 10: its result echoes the spec it asked for (it was
	// empty, and a client matching results by spec waited to its timeout).
	if want := (catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: "20261120"}); res.Spec != want || res.Format != catalog.FormatRaw {
		t.Errorf("future-version request's result echoes spec %+v format %q, want %+v raw", res.Spec, res.Format, want)
	}
}

// TestCorruptCacheIsFetchedAgain: a stored blob that stopped matching its
// digest is quarantined and fetched again, instead of failing the request.
func TestCorruptCacheIsFetchedAgain(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	e := newEnv(t, m)
	emb := e.start(t)
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	first := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "first", Spec: spec, Format: catalog.FormatQCOW2})
	if first.Status != messages.ResultPrepared {
		t.Fatalf("first: %+v", first.Failure)
	}
	// Flip a byte of the committed kernel blob behind the store's back.
	kernel, err := filepath.EvalSymlinks(first.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(kernel, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 100); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	kernelRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleKernel)
	before := m.Requests(kernelRel)

	second := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "second", Spec: spec, Format: catalog.FormatQCOW2})
	if second.Status != messages.ResultPrepared {
		t.Fatalf("second: %+v", second.Failure)
	}
	if got, want := fileSHA256(t, second.Kernel), m.Digest(kernelRel).Hex; got != want {
		t.Errorf("kernel after repair has sha256 %s, want %s", got, want)
	}
	if m.Requests(kernelRel) == before {
		t.Error("the corrupt kernel was not fetched again")
	}
	if q, _ := os.ReadDir(filepath.Join(e.cache, "quarantine")); len(q) == 0 {
		t.Error("nothing was quarantined")
	}
}

// TestConcurrentWorkersOneResultEach runs two full sets of stages (as two
// processes would) on one server and many requests at once, some sharing ids:
// the collectors race on the same request states, and every request id still
// gets exactly one result.
func TestConcurrentWorkersOneResultEach(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t)
	e := newEnv(t, m)
	emb := e.start(t) // first set of stages, with the server
	second, err := emb.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pipeline.RunStages(ctx, second, pipeline.AllStages, e.deps) }()
	defer func() { cancel(); <-done }()

	type job struct {
		id     string
		arch   catalog.Arch
		format catalog.DiskFormat
	}
	var jobs []job
	for i := 0; i < 8; i++ {
		arch := []catalog.Arch{catalog.ArchAMD64, catalog.ArchARM64}[i%2]
		format := []catalog.DiskFormat{catalog.FormatRaw, catalog.FormatQCOW2}[(i/2)%2]
		jobs = append(jobs, job{id: fmt.Sprintf("c%d", i), arch: arch, format: format})
	}
	jobs = append(jobs, jobs[0], jobs[3]) // duplicate publishes of the same requests
	results := make(chan messages.Result, len(jobs))
	errs := make(chan error, len(jobs))
	for _, j := range jobs {
		go func() {
			cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer ccancel()
			res, err := testutil.Prepare(cctx, emb.Conn, messages.PrepareRequest{
				RequestID: j.id, Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: j.arch}, Format: j.format,
			}, nil)
			if err != nil {
				errs <- err
				return
			}
			results <- res
		}()
	}
	byID := map[string]messages.Result{}
	for range jobs {
		select {
		case err := <-errs:
			t.Fatal(err)
		case res := <-results:
			if res.Status != messages.ResultPrepared {
				t.Fatalf("%s: %+v", res.RequestID, res.Failure)
			}
			if prev, ok := byID[res.RequestID]; ok && !prev.CompletedAt.Equal(res.CompletedAt) {
				t.Errorf("%s: two different results", res.RequestID)
			}
			byID[res.RequestID] = res
		}
	}
	js, _ := jetstream.New(emb.Conn)
	s, err := js.Stream(context.Background(), messages.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 8 || info.State.LastSeq != 8 {
		t.Errorf("results stream holds %d results after %d publishes, want 8 and 8", info.State.Msgs, info.State.LastSeq)
	}
}

// asAnyClient publishes req the way the README tells a client in any
// language to (a plain JetStream publish, no message id, a core
// subscription to the result subject made first) and returns the answer.
func asAnyClient(t *testing.T, nc *nats.Conn, req any, id string) messages.Result {
	t.Helper()
	sub, err := nc.SubscribeSync(messages.ResultSubject(id))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(context.Background(), messages.SubjectPrepare, data); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(time.Minute)
	if err != nil {
		t.Fatalf("no answer for %s: %v", id, err)
	}
	var res messages.Result
	if err := messages.Decode(msg.Data, messages.TypeResult, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// TestRequestIDReuseForAnyClient: a client that follows the README and
// reuses an id for another image is told so on the subject it listens on,
// and never sees the other image's files; repeating the original request
// gets the original result again; format may be left out.
func TestRequestIDReuseForAnyClient(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	e := newEnv(t, m)
	emb := e.start(t)
	spec := map[string]string{"distro": "ubuntu", "version": "24.04", "arch": "amd64"}
	request := func(id, format string) map[string]any {
		r := map[string]any{"v": 1, "type": "prepare.request", "request_id": id, "spec": spec}
		if format != "" {
			r["format"] = format
		}
		return r
	}
	// No format: qcow2.
	first := asAnyClient(t, emb.Conn, request("reused", ""), "reused")
	if first.Status != messages.ResultPrepared || first.Format != catalog.FormatQCOW2 || first.DiskFormat != catalog.FormatQCOW2 {
		t.Fatalf("first (no format): %+v", first)
	}
	// The same id for raw, at once and after the first finished: a refusal
	// that echoes what was asked, with no files.
	for i := range 2 {
		res := asAnyClient(t, emb.Conn, request("reused", "raw"), "reused")
		if res.Status != messages.ResultFailed || res.Failure == nil || res.Failure.Code != messages.FailureRequestIDReused {
			t.Fatalf("reuse %d: %+v", i, res)
		}
		if res.Format != catalog.FormatRaw || res.Disk != "" || len(res.Files) != 0 {
			t.Fatalf("reuse %d: the refusal carries another request's image: %+v", i, res)
		}
		if !strings.Contains(res.Failure.Cause, "already used") || !strings.Contains(res.Failure.Cause, "qcow2") {
			t.Errorf("cause: %s", res.Failure.Cause)
		}
	}
	// The original request again: the original result again.
	again := asAnyClient(t, emb.Conn, request("reused", "qcow2"), "reused")
	if again.Status != messages.ResultPrepared || !again.CompletedAt.Equal(first.CompletedAt) || again.Disk != first.Disk {
		t.Fatalf("original repeated: %+v", again)
	}
	// A format vmprep does not make: said in the request's own words.
	bad := asAnyClient(t, emb.Conn, request("badformat", "vmdk"), "badformat")
	if bad.Status != messages.ResultFailed || !strings.Contains(bad.Failure.Cause, `"format": "vmdk" is not a disk format`) || strings.Contains(bad.Failure.Cause, "invalid message") {
		t.Fatalf("bad format: %+v", bad.Failure)
	}
}

// Namespaces keep clients apart: the same request id in two namespaces is
// two requests, each answered and reported on its own subjects.
func TestNamespaces(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	e := newEnv(t, m)
	emb := e.start(t)
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	// Someone listening to the default namespace's subjects hears nothing
	// of the namespaced requests.
	leak, err := emb.Conn.SubscribeSync("vmprep.*.same-id")
	if err != nil {
		t.Fatal(err)
	}
	results := map[string]messages.Result{}
	for ns, format := range map[string]catalog.DiskFormat{"alice": catalog.FormatQCOW2, "bob": catalog.FormatRaw} {
		c, err := client.New(emb.Conn, client.WithNamespace(ns))
		if err != nil {
			t.Fatal(err)
		}
		var progress []messages.Progress
		var mu sync.Mutex
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		res, err := c.Prepare(ctx, client.Request{RequestID: "same-id", Spec: spec, Format: format}, client.WithProgress(func(p messages.Progress) {
			mu.Lock()
			progress = append(progress, p)
			mu.Unlock()
		}))
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", ns, err)
		}
		if res.Namespace != ns || res.Format != format || res.Status != messages.ResultPrepared {
			t.Fatalf("%s: %+v", ns, res)
		}
		mu.Lock()
		for _, p := range progress {
			if p.Namespace != ns {
				t.Errorf("%s heard progress of namespace %q", ns, p.Namespace)
			}
		}
		mu.Unlock()
		results[ns] = res
	}
	if results["alice"].DiskFormat == results["bob"].DiskFormat {
		t.Fatal("one id in two namespaces gave one answer")
	}
	if msg, err := leak.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("a default-namespace subscriber heard %s", msg.Subject)
	}
	// A malformed namespace never becomes a request.
	js, _ := jetstream.New(emb.Conn)
	if _, err := js.Publish(context.Background(), "vmprep.prepare.bad.ns", []byte(`{"v":1,"type":"prepare.request","request_id":"x","spec":{"distro":"ubuntu","version":"24.04"}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.New(emb.Conn, client.WithNamespace("bad.ns")); err == nil {
		t.Fatal("a namespace with a dot was accepted")
	}
	dead, err := js.Stream(context.Background(), messages.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		msg, err := dead.GetLastMsgForSubject(context.Background(), messages.DeadSubject(messages.StageResolver))
		if err == nil && strings.Contains(string(msg.Data), "not a request subject") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter for the malformed namespace (%v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
