package ops_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

func deploy(t *testing.T, m *testmirror.Mirror, stages ...string) (*embedded.Deployment, jetstream.JetStream) {
	t.Helper()
	opts := []embedded.Option{embedded.WithCacheDir(t.TempDir()), embedded.WithShortPulls()}
	if m != nil {
		opts = append(opts, embedded.WithCatalog(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring())))
	}
	if stages != nil {
		opts = append(opts, embedded.WithStages(stages...))
	}
	d, err := embedded.Start(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	js, err := jetstream.New(d.Conn())
	if err != nil {
		t.Fatal(err)
	}
	return d, js
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// TestDeadLetters: poison messages become dead letters that can be listed
// and shown with their originals, and replay refuses what it must.
func TestDeadLetters(t *testing.T) {
	_, js := deploy(t, nil)
	poisonAsset := `{"v":1,"type":"asset","request_id":"r-poison"}`
	garbage := "not JSON at all"
	big := `{"v":1,"type":"asset","request_id":"r-big","pad":"` + strings.Repeat("x", 2*messages.DeadLetterDataMax) + `"}`
	for subject, data := range map[string]string{messages.SubjectFetch: poisonAsset, messages.SubjectPrepare: garbage, messages.SubjectVerify: big} {
		if _, err := js.Publish(ctx(t), subject, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	var all []ops.DeadEntry
	eventually(t, "three dead letters", func() bool {
		var err error
		all, _, err = ops.DeadLetters(ctx(t), js, "", 100)
		return err == nil && len(all) == 3
	})
	byStage := map[string]ops.DeadEntry{}
	for _, e := range all {
		if e.Reason == "" || e.Seq == 0 || e.At.IsZero() {
			t.Errorf("dead letter without reason, sequence or time: %+v", e)
		}
		byStage[e.Stage] = e
	}
	fetch, resolver, verify := byStage[messages.StageFetcher], byStage[messages.StageResolver], byStage[messages.StageVerifier]
	if string(fetch.Data) != poisonAsset || fetch.RequestID != "r-poison" || fetch.Subject != messages.SubjectFetch {
		t.Errorf("fetcher dead letter: %+v", fetch)
	}
	if string(resolver.Data) != garbage || resolver.RequestID != "" {
		t.Errorf("resolver dead letter: %+v", resolver)
	}
	if !verify.Truncated || verify.Size != len(big) {
		t.Errorf("verifier dead letter of %d bytes: truncated %v, size %d", len(big), verify.Truncated, verify.Size)
	}

	// One stage only; one by sequence.
	only, _, err := ops.DeadLetters(ctx(t), js, messages.StageFetcher, 100)
	if err != nil || len(only) != 1 || only[0].Seq != fetch.Seq {
		t.Errorf("fetcher's dead letters: %v %+v", err, only)
	}
	got, err := ops.GetDeadLetter(ctx(t), js, fetch.Seq)
	if err != nil || string(got.Data) != poisonAsset {
		t.Errorf("GetDeadLetter(%d) = %+v, %v", fetch.Seq, got, err)
	}
	if _, err := ops.GetDeadLetter(ctx(t), js, 9999); !errors.Is(err, ops.ErrDeadLetterNotFound) {
		t.Errorf("GetDeadLetter(9999): %v, want ErrDeadLetterNotFound", err)
	}
	if _, _, err := ops.DeadLetters(ctx(t), js, "", 2); err != nil {
		t.Fatal(err)
	} else if _, truncated, _ := ops.DeadLetters(ctx(t), js, "", 2); !truncated {
		t.Error("a listing cut at 2 of 3 does not say so")
	}

	// r-poison ended with a failed result: replaying cannot change it.
	eventually(t, "r-poison's failed result", func() bool {
		st, err := ops.GetRequest(ctx(t), js, "", "r-poison")
		return err == nil && st.Result != nil
	})
	if _, err := ops.Replay(ctx(t), js, fetch.Seq); !errors.Is(err, ops.ErrAlreadyAnswered) || !strings.Contains(err.Error(), "r-poison") {
		t.Errorf("replay of an answered request: %v, want ErrAlreadyAnswered naming it", err)
	}
	if _, err := ops.Replay(ctx(t), js, verify.Seq); !errors.Is(err, ops.ErrNotReplayable) {
		t.Errorf("replay of a truncated original: %v, want ErrNotReplayable", err)
	}
	// Garbage has no request to answer: it may be replayed, and a second
	// replay moments later is the same message.
	first, err := ops.Replay(ctx(t), js, resolver.Seq)
	if err != nil || first.Duplicate || first.Subject != messages.SubjectPrepare {
		t.Fatalf("replay: %+v, %v", first, err)
	}
	second, err := ops.Replay(ctx(t), js, resolver.Seq)
	if err != nil || !second.Duplicate || second.MsgID != first.MsgID {
		t.Errorf("second replay: %+v, %v; want a duplicate of %s", second, err, first.MsgID)
	}
}

// TestReplayRunsOnce: a dead letter whose request never got an answer (left
// by an earlier build that could not process it) runs when replayed, and a
// replay after its result does not run it again.
func TestReplayRunsOnce(t *testing.T) {
	for _, ns := range []string{"", "alice"} {
		t.Run("namespace "+ns, func(t *testing.T) { testReplayRunsOnce(t, ns) })
	}
}

func testReplayRunsOnce(t *testing.T, ns string) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	_, js := deploy(t, m)
	req := messages.PrepareRequest{RequestID: "r-fixed", Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}, Format: image.FormatQCOW2}
	data, err := messages.Encode(messages.TypePrepareRequest, &req)
	if err != nil {
		t.Fatal(err)
	}
	dl := pipeline.DeadLetterPolicy(messages.StageResolver)(stageMessage(messages.PrepareSubject(ns), data), "handler panic: a bug since fixed")
	if _, err := js.Publish(ctx(t), dl.Subject, dl.Data); err != nil {
		t.Fatal(err)
	}
	entries, _, err := ops.DeadLetters(ctx(t), js, "", 10)
	if err != nil || len(entries) != 1 {
		t.Fatalf("dead letters: %v %+v", err, entries)
	}
	r, err := ops.Replay(ctx(t), js, entries[0].Seq)
	if err != nil || r.RequestID != "r-fixed" {
		t.Fatalf("replay: %+v %v", r, err)
	}
	var st ops.RequestStatus
	eventually(t, "r-fixed's result", func() bool {
		st, err = ops.GetRequest(ctx(t), js, ns, "r-fixed")
		return err == nil && st.Result != nil
	})
	if st.Result.Status != messages.ResultPrepared {
		t.Fatalf("replayed request: %+v", st.Result.Failure)
	}
	work, err := js.Stream(ctx(t), messages.StreamWork)
	if err != nil {
		t.Fatal(err)
	}
	before := work.CachedInfo().State.LastSeq
	if _, err := ops.Replay(ctx(t), js, entries[0].Seq); !errors.Is(err, ops.ErrAlreadyAnswered) {
		t.Fatalf("second replay: %v, want ErrAlreadyAnswered", err)
	}
	info, err := work.Info(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != before {
		t.Errorf("the refused replay published work (last sequence %d → %d)", before, info.State.LastSeq)
	}
}

// TestStatus: a request stuck for want of a fetcher shows each asset waiting
// at the fetcher; once one runs, every asset is done and the result is there.
// The overview lists the streams, each stage's backlog and the live processes.
func TestStatus(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	d, js := deploy(t, m, embedded.StageResolver, embedded.StageVerifier, embedded.StageCollector)
	c := d.Client()
	done := make(chan error, 1)
	go func() {
		_, err := c.Prepare(context.Background(), client.Request{RequestID: "r-status", Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}})
		done <- err
	}()
	var st ops.RequestStatus
	eventually(t, "three assets waiting for the fetcher", func() bool {
		var err error
		st, err = ops.GetRequest(ctx(t), js, "", "r-status")
		if err != nil || len(st.Assets) != 3 {
			return false
		}
		for _, a := range st.Assets {
			if a.Stage != messages.StageFetcher || a.Done {
				return false
			}
		}
		return true
	})
	if st.Spec.Distro != "ubuntu" || st.Result != nil || st.Assets[0].Role != image.RoleKernel || st.Assets[0].Subject != messages.SubjectFetch || st.Assets[0].Status != messages.StatusResolved {
		t.Errorf("stuck request: %+v", st)
	}
	ov, err := ops.GetOverview(ctx(t), js)
	if err != nil {
		t.Fatal(err)
	}
	work := findStream(ov, messages.StreamWork)
	if work == nil || work.Messages != 3 {
		t.Errorf("VMPREP_WORK in the overview: %+v, want 3 messages", work)
	}
	for _, want := range []string{messages.StreamResults, messages.StreamDead, "KV_" + messages.BucketRequests} {
		if findStream(ov, want) == nil {
			t.Errorf("overview lacks stream %s: %+v", want, ov.Streams)
		}
	}

	// The fetcher's process starts and announces itself.
	actx, stopAnnounce := context.WithCancel(context.Background())
	announced := make(chan struct{})
	go func() {
		defer close(announced)
		ops.Announce(actx, js, []string{messages.StageFetcher}, ops.Process{Host: "worker-1.example", Version: "test"}, nil, slog.New(slog.DiscardHandler))
	}()
	fctx, stopFetcher := context.WithCancel(context.Background())
	fetcher, err := pipeline.NewStages(fctx, d.Conn(), []string{messages.StageFetcher}, pipeline.Deps{Store: d.Store(), Downloader: download.New()})
	if err != nil {
		t.Fatal(err)
	}
	fetcherDone := make(chan struct{})
	go func() { fetcher.Run(fctx); close(fetcherDone) }()
	defer func() { stopFetcher(); <-fetcherDone }()
	if err := <-done; err != nil {
		t.Fatalf("prepare: %v", err)
	}
	st, err = ops.GetRequest(ctx(t), js, "", "r-status")
	if err != nil {
		t.Fatal(err)
	}
	if st.Result == nil || st.Result.Status != messages.ResultPrepared || len(st.Assets) != 3 {
		t.Fatalf("finished request: %+v", st)
	}
	for _, a := range st.Assets {
		if !a.Done || a.Path == "" || a.Stage != "" {
			t.Errorf("finished asset: %+v", a)
		}
	}

	eventually(t, "the fetcher's process in the overview", func() bool {
		ov, err = ops.GetOverview(ctx(t), js)
		return err == nil && len(ov.Processes) == 1
	})
	p := ov.Processes[0]
	if p.Stage != messages.StageFetcher || p.Host != "worker-1.example" || p.PID == 0 || !p.Consuming {
		t.Errorf("announced process: %+v", p)
	}
	fc := findConsumer(ov, messages.StageFetcher)
	if fc == nil || fc.Pending != 0 || fc.Filter != messages.SubjectFetch {
		t.Errorf("fetcher consumer: %+v", fc)
	}
	// The resolver's consumer takes two subjects: both are its filter.
	if rc := findConsumer(ov, messages.StageResolver); rc == nil || !strings.Contains(rc.Filter, "vmprep.prepare.>") {
		t.Errorf("resolver consumer: %+v, want a filter naming vmprep.prepare.>", rc)
	}
	for _, idle := range ov.Idle {
		if idle == messages.StageFetcher {
			t.Errorf("the fetcher is listed as idle while its process is alive: %v", ov.Idle)
		}
	}
	if !contains(ov.Idle, messages.StageResolver) {
		t.Errorf("the resolver has no announced process, yet is not idle: %v", ov.Idle)
	}
	// A process that stops removes its entry.
	stopAnnounce()
	<-announced
	if ov, err = ops.GetOverview(ctx(t), js); err != nil || len(ov.Processes) != 0 {
		t.Errorf("after the process stopped: %v %+v", err, ov.Processes)
	}

	if _, err := ops.GetRequest(ctx(t), js, "", "r-nobody"); !errors.Is(err, ops.ErrUnknownRequest) {
		t.Errorf("unknown request: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func findStream(ov ops.Overview, name string) *ops.StreamState {
	for i := range ov.Streams {
		if ov.Streams[i].Name == name {
			return &ov.Streams[i]
		}
	}
	return nil
}

func findConsumer(ov ops.Overview, name string) *ops.ConsumerState {
	for i := range ov.Consumers {
		if ov.Consumers[i].Name == name {
			return &ov.Consumers[i]
		}
	}
	return nil
}

// TestStatusInNamespaces: one request id used in two namespaces is two
// requests, and status finds each in its own (a namespace it was not used in
// knows nothing of it).
func TestStatusInNamespaces(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	d, js := deploy(t, m)
	formats := map[string]image.DiskFormat{"": image.FormatQCOW2, "alice": image.FormatRaw}
	for ns, format := range formats {
		c, err := client.New(d.Conn(), client.WithNamespace(ns))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Prepare(ctx(t), client.Request{RequestID: "r-ns", Format: format,
			Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}}); err != nil {
			t.Fatalf("prepare in namespace %q: %v", ns, err)
		}
	}
	for ns, format := range formats {
		st, err := ops.GetRequest(ctx(t), js, ns, "r-ns")
		if err != nil {
			t.Fatalf("status in namespace %q: %v", ns, err)
		}
		if st.Namespace != ns || st.Result == nil || st.Result.Format != format || len(st.Assets) != 3 {
			t.Errorf("status in namespace %q: %+v, want its own %s result", ns, st, format)
		}
	}
	if _, err := ops.GetRequest(ctx(t), js, "bob", "r-ns"); !errors.Is(err, ops.ErrUnknownRequest) {
		t.Errorf("status in namespace bob: %v, want ErrUnknownRequest", err)
	}
}

// TestAnnounceWaitsForConsuming: a process that starts consuming moments
// after it announces itself is never listed as not consuming.
func TestAnnounceWaitsForConsuming(t *testing.T) {
	_, _, js := testutil.EmbeddedJetStream(t)
	started := time.Now()
	consuming := func() error {
		if time.Since(started) < 300*time.Millisecond {
			return errors.New("not consuming: fetcher")
		}
		return nil
	}
	actx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ops.Announce(actx, js, []string{messages.StageFetcher}, ops.Process{Host: "h1"}, consuming, slog.New(slog.DiscardHandler))
	}()
	defer func() { stop(); <-done }()
	eventually(t, "the fetcher's liveness entry", func() bool {
		ps, err := ops.Processes(ctx(t), js)
		if err != nil || len(ps) == 0 {
			return false
		}
		if !ps[0].Consuming {
			t.Fatalf("first liveness entry: %+v, want consuming", ps[0])
		}
		return true
	})
}

// A converter serves its stage's consumer and the targeted one it announced;
// status counts it for both.
func TestProcessServes(t *testing.T) {
	p := ops.Process{Stage: "converter", Consumers: []string{"converter", "converter_host1"}}
	for _, tc := range []struct {
		consumer string
		want     bool
	}{{"converter", true}, {"converter_host1", true}, {"converter_host2", false}, {"fetcher", false}} {
		if got := p.Serves(tc.consumer); got != tc.want {
			t.Errorf("Serves(%q) = %v, want %v", tc.consumer, got, tc.want)
		}
	}
}
