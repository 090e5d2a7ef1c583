package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestSetupLimits: ApplyLimits gives every stream and bucket its limits,
// a second run with other limits updates them, the work stream refuses a
// publish past its limit (it never drops pending work), and the resolver
// reads the per-namespace limit setup recorded.
func TestSetupLimits(t *testing.T) {
	t.Parallel()
	_, _, js := testutil.EmbeddedJetStream(t)
	ctx := context.Background()
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{ObjectBucket: "b"}); err != nil {
		t.Fatal(err)
	}
	if n, err := pipeline.QueuedPerNamespace(ctx, js); err != nil || n != pipeline.DefaultMaxQueuedPerNamespace {
		t.Fatalf("before setup recorded a limit: %d, %v; want the default %d", n, err, pipeline.DefaultMaxQueuedPerNamespace)
	}
	kv := []string{messages.BucketRequests, messages.BucketLeases, messages.BucketVerified}
	all := append([]string{messages.StreamWork, messages.StreamResults, messages.StreamDead, "OBJ_b"}, "KV_"+kv[0], "KV_"+kv[1], "KV_"+kv[2])

	check := func(l pipeline.Limits, wantUpdated bool) {
		t.Helper()
		got, err := pipeline.ApplyLimits(ctx, js, l, kv, "b", nil)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]pipeline.StreamLimits{}
		for _, s := range got {
			seen[s.Stream] = s
			if s.Updated != wantUpdated {
				t.Errorf("%s updated=%v, want %v", s.Stream, s.Updated, wantUpdated)
			}
		}
		for _, name := range all {
			s, ok := seen[name]
			if !ok {
				t.Fatalf("no limits reported for %s", name)
			}
			st, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			c := st.CachedInfo().Config
			if c.MaxBytes <= 0 || c.MaxBytes != s.MaxBytes {
				t.Errorf("%s max bytes %d (reported %d): want a limit", name, c.MaxBytes, s.MaxBytes)
			}
		}
		w, _ := js.Stream(ctx, messages.StreamWork)
		c := w.CachedInfo().Config
		if c.MaxMsgs != l.WorkMaxMsgs || c.MaxBytes != l.WorkMaxBytes || c.MaxMsgSize != l.MaxMsgSize || c.Discard != jetstream.DiscardNew {
			t.Errorf("work stream limits %d msgs %d bytes %d size %s; want %d %d %d new", c.MaxMsgs, c.MaxBytes, c.MaxMsgSize, c.Discard, l.WorkMaxMsgs, l.WorkMaxBytes, l.MaxMsgSize)
		}
		r, _ := js.Stream(ctx, messages.StreamResults)
		if got := r.CachedInfo().Config; got.MaxAge != l.ResultsMaxAge || got.MaxBytes != l.ResultsMaxBytes {
			t.Errorf("results max age %s bytes %d; want %s %d", got.MaxAge, got.MaxBytes, l.ResultsMaxAge, l.ResultsMaxBytes)
		}
		o, _ := js.Stream(ctx, "OBJ_b")
		if got := o.CachedInfo().Config.MaxBytes; got != l.ObjectMaxBytes {
			t.Errorf("object bucket max bytes %d, want %d", got, l.ObjectMaxBytes)
		}
		lease, _ := js.Stream(ctx, "KV_"+messages.BucketLeases)
		if got := lease.CachedInfo().Config.MaxAge; got != pipeline.LeaseTTL {
			t.Errorf("the leases' TTL became %s: limits must not touch it", got)
		}
		if n, err := pipeline.QueuedPerNamespace(ctx, js); err != nil || n != l.QueuedPerNamespace {
			t.Errorf("per-namespace limit read back %d (%v), want %d", n, err, l.QueuedPerNamespace)
		}
	}
	def := pipeline.DefaultLimits()
	check(def, true)
	check(def, false) // the same again changes nothing

	other := def
	other.WorkMaxMsgs, other.WorkMaxBytes, other.ResultsMaxAge, other.ObjectMaxBytes, other.QueuedPerNamespace = 3, 1<<20, time.Hour, 1<<30, 7
	other.BucketMaxBytes, other.DeadMaxAge = 8<<20, 2*time.Hour
	check(other, true)

	// Past the work stream's limit a publish fails, naming why; nothing queued is dropped.
	for i := 0; i < 3; i++ {
		if _, err := js.Publish(ctx, messages.SubjectFetch, []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	_, err := js.Publish(ctx, messages.SubjectFetch, []byte(`{"n":3}`))
	if err == nil || !strings.Contains(err.Error(), "maximum messages exceeded") {
		t.Fatalf("publish past the work stream's limit: %v; want a refusal naming the limit", err)
	}

	bad := def
	bad.BucketMaxBytes = 0
	if _, err := pipeline.ApplyLimits(ctx, js, bad, kv, "b", nil); err == nil || !strings.Contains(err.Error(), "bucket max bytes 0") {
		t.Fatalf("a zero limit: %v; want a refusal naming it", err)
	}
}

// gatedResolver is the real resolver, held at Canonical until the gate opens:
// the requests it has taken stay in progress, so the test knows how many a
// namespace holds.
type gatedResolver struct {
	pipeline.Resolver
	gate chan struct{}
}

func (g gatedResolver) Canonical(spec image.Spec) (image.Spec, error) {
	<-g.gate
	return g.Resolver.Canonical(spec)
}

// TestQueuedPerNamespaceLimit: with a limit of 2, alice's third to fifth
// requests (while her first two are in the resolver) are answered at once
// with a failed result naming the limit; bob's request, in his own
// namespace, is taken.
func TestQueuedPerNamespaceLimit(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	e := newEnv(t, m)
	_, nc, js := testutil.EmbeddedJetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{}); err != nil {
		t.Fatal(err)
	}
	l := pipeline.DefaultLimits()
	l.QueuedPerNamespace = 2
	kv := []string{messages.BucketRequests, messages.BucketLeases, messages.BucketVerified}
	if _, err := pipeline.ApplyLimits(ctx, js, l, kv, "", nil); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	e.deps.Resolver = gatedResolver{Resolver: e.deps.Resolver, gate: gate}
	st, err := pipeline.NewStages(ctx, nc, []string{messages.StageResolver, messages.StageCollector}, e.deps)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); st.Run(ctx) }()
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(func() { open(); cancel(); wg.Wait() })

	alice, err := client.New(nc, client.WithNamespace("alice"))
	if err != nil {
		t.Fatal(err)
	}
	spec := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}
	type answer struct {
		id  string
		res client.Result
		err error
	}
	answers := make(chan answer, 5)
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("a%d", i)
		go func() {
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Minute)
			defer pcancel()
			res, err := alice.Prepare(pctx, client.Request{RequestID: id, Spec: spec})
			answers <- answer{id, res, err}
		}()
	}
	// Three answers come while the gate is shut: the refusals.
	for i := 0; i < 3; i++ {
		a := <-answers
		var failed *client.FailedError
		if !errors.As(a.err, &failed) {
			t.Fatalf("request %s: %v; want a failed result", a.id, a.err)
		}
		if s := a.err.Error(); !strings.Contains(s, "namespace alice already has 2 requests") || !strings.Contains(s, "--max-queued-per-namespace") {
			t.Errorf("request %s failed with %q; want the namespace and the limit named", a.id, s)
		}
	}
	// bob is not held to alice's count: the resolver takes his request
	// (it waits at the gate with alice's two) rather than refusing it.
	bob, err := client.New(nc, client.WithNamespace("bob"))
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithTimeout(ctx, 3*time.Second)
	defer bcancel()
	if _, err := bob.Prepare(bctx, client.Request{RequestID: "b0", Spec: spec}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("bob's request: %v; want it taken and waiting, not refused", err)
	}
}

// TestResolverFairAcrossNamespaces: alice has 2000 requests queued when
// bob's one arrives; the resolver takes bob's while alice's are still
// waiting, instead of after all of them (what stream order would do), and
// alice's requests past the per-namespace limit are refused rather than
// queued. The assertion is on order (KV revisions), not on seconds.
func TestResolverFairAcrossNamespaces(t *testing.T) {
	t.Parallel()
	const flood = 2000
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	e := newEnv(t, m)
	e.deps.Concurrency = 1
	_, nc, js := testutil.EmbeddedJetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{}); err != nil {
		t.Fatal(err)
	}
	publishReq := func(ns, id string) {
		t.Helper()
		data, err := messages.Encode(messages.TypePrepareRequest, &messages.PrepareRequest{RequestID: id,
			Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishAsync(messages.PrepareSubject(ns), data); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < flood; i++ {
		publishReq("alice", fmt.Sprintf("a%d", i))
	}
	publishReq("bob", "b0")
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		t.Fatal("publishing the requests took over a minute")
	}
	sent := time.Now()

	st, err := pipeline.NewStages(ctx, nc, []string{messages.StageResolver}, e.deps)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); st.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })

	kv, err := js.KeyValue(ctx, messages.BucketRequests)
	if err != nil {
		t.Fatal(err)
	}
	var bobRev uint64
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if e, err := kv.Get(ctx, messages.RequestKey("bob", "b0")); err == nil {
			bobRev = e.Revision()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("bob's request was not resolved in 5 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("bob's request was resolved %s after it was queued behind %d of alice's", time.Since(sent).Round(time.Millisecond), flood)
	// Let the resolver finish what it took of alice's, then compare.
	cons, err := js.Consumer(ctx, messages.StreamWork, messages.StageResolver)
	if err != nil {
		t.Fatal(err)
	}
	for {
		info, err := cons.Info(ctx)
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the resolver did not finish alice's requests: %+v %v", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var before, after int
	for k := range keys.Keys() {
		if !strings.HasPrefix(k, "alice.") {
			continue
		}
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if e.Revision() < bobRev {
			before++
		} else {
			after++
		}
	}
	t.Logf("alice's requests resolved before bob's: %d, after: %d, refused: %d", before, after, flood-before-after)
	if after == 0 {
		t.Fatalf("bob's request was resolved after every one of alice's %d: no fairness", before)
	}
	if before+after > flood/2 {
		t.Errorf("%d of alice's %d requests were taken: the per-namespace limit (%d) should have refused most", before+after, flood, pipeline.DefaultMaxQueuedPerNamespace)
	}
}

// TestSetupRaisesOwnedHistory: a deployment made by an older vmprep has
// one entry per key in the buckets read as their owner's last write
// (stage.GetOwned), so an overwrite leaves nothing to step back to.
// vmprep setup (ApplyLimits) raises their history, and leaves the leases'
// alone.
func TestSetupRaisesOwnedHistory(t *testing.T) {
	t.Parallel()
	_, _, js := testutil.EmbeddedJetStream(t)
	ctx := context.Background()
	buckets := []string{messages.BucketRequests, messages.BucketVerified, fleetkv.Bucket, messages.BucketLeases}
	for _, b := range buckets {
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b, History: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.ApplyLimits(ctx, js, pipeline.DefaultLimits(), buckets, "", nil); err != nil {
		t.Fatal(err)
	}
	for _, b := range buckets {
		kv, err := js.KeyValue(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := int64(stage.OwnedHistory)
		if b == messages.BucketLeases {
			want = 1
		}
		if st.History() != want {
			t.Errorf("bucket %s keeps %d entries per key after setup, want %d", b, st.History(), want)
		}
	}
}
