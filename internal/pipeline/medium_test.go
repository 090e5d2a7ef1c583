package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestMediumRoutes is the routing table of both modes in one place: where
// a verified asset goes for each request's target and client-converts
// fields, and which requests a mode refuses at the resolver.
func TestMediumRoutes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _, js := testutil.EmbeddedJetStream(t)
	objs, err := objectstore.Open(ctx, js, objectstore.Config{Bucket: "media"})
	if err != nil {
		t.Fatal(err)
	}
	served := func(_ context.Context, host string) (bool, error) { return host == "mac1", nil }
	shared, objects := sharedCache{}, &objectStore{objects: objs, targetKnown: served}
	asked := errors.New("consumer lookup failed")
	failing := &objectStore{objects: objs, targetKnown: func(context.Context, string) (bool, error) { return false, asked }}

	verifierDone, converterDone := messages.DoneSubject(messages.StageVerifier), messages.DoneSubject(messages.StageConverter)
	for _, tc := range []struct {
		name           string
		medium         Medium
		target         string
		clientConverts bool
		convert        bool
		subject, step  string
		err            string // a permanent refusal saying this
		cause          error  // an error passed on as it is
	}{
		{name: "shared, as published", medium: shared, subject: verifierDone, step: "done"},
		{name: "shared, to convert", medium: shared, convert: true, subject: messages.SubjectConvert, step: "convert"},
		// A target in a shared cache is this host (Accept): any converter's files are on it.
		{name: "shared, targeted", medium: shared, target: "gateway", convert: true, subject: messages.SubjectConvert, step: "convert"},
		{name: "shared, client converts", medium: shared, clientConverts: true, convert: true, subject: messages.SubjectConvert, step: "convert"},
		{name: "objects, as published", medium: objects, subject: verifierDone, step: "done"},
		{name: "objects, to convert", medium: objects, convert: true, subject: messages.SubjectConvert, step: "convert"},
		{name: "objects, targeted", medium: objects, target: "mac1", subject: messages.TargetSubject("mac1"), step: "place"},
		{name: "objects, targeted, to convert", medium: objects, target: "mac1", convert: true, subject: messages.TargetSubject("mac1"), step: "place"},
		{name: "objects, targeted, client converts", medium: objects, target: "mac1", clientConverts: true, convert: true, subject: messages.TargetSubject("mac1"), step: "place"},
		{name: "objects, client converts", medium: objects, clientConverts: true, convert: true, subject: verifierDone, step: "done"},
		{name: "objects, a host nobody serves", medium: objects, target: "mac9", err: "no converter serves target host mac9: start `converter --target mac9 --store nats:media`"},
		{name: "objects, consumer lookup fails", medium: failing, target: "mac1", cause: asked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := messages.AssetEvent{Target: tc.target, ClientConverts: tc.clientConverts}
			subject, step, err := tc.medium.Next(ctx, ev, tc.convert)
			switch {
			case tc.err != "":
				if !stage.IsPermanent(err) || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("Next = %q, %q, %v; want a permanent refusal saying %q", subject, step, err, tc.err)
				}
			case tc.cause != nil:
				if !errors.Is(err, tc.cause) || stage.IsPermanent(err) {
					t.Errorf("Next = %v; want %v, retryable", err, tc.cause)
				}
			case err != nil || subject != tc.subject || step != tc.step:
				t.Errorf("Next = %q, %q, %v; want %q, %q", subject, step, err, tc.subject, tc.step)
			}
		})
	}

	for _, tc := range []struct {
		name   string
		medium Medium
		req    messages.PrepareRequest
		err    string
	}{
		{"shared, this host", shared, messages.PrepareRequest{Target: "gateway"}, ""},
		{"shared, another host", shared, messages.PrepareRequest{Target: "mac1"}, "target host mac1: this deployment keeps every file in one cache directory on gateway"},
		{"shared, clones", shared, messages.PrepareRequest{Target: "gateway", Clones: []messages.CloneRequest{{Name: "vm.raw"}}}, "clones are made by the target host's converter"},
		{"objects, another host", objects, messages.PrepareRequest{Target: "mac1"}, ""},
		{"objects, clones", objects, messages.PrepareRequest{Target: "mac1", Clones: []messages.CloneRequest{{Name: "vm.raw"}}}, ""},
	} {
		err := tc.medium.Accept(tc.req, "gateway")
		if tc.err == "" && err != nil || tc.err != "" && (!stage.IsPermanent(err) || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Accept, %s = %v, want %q", tc.name, err, tc.err)
		}
	}

	names := func(cs []StageConsumer) (out []string) {
		for _, c := range cs {
			out = append(out, c.Name+"="+strings.Join(c.Filters, ","))
		}
		return out
	}
	convert, mac1 := messages.StageConverter+"="+messages.SubjectConvert, messages.TargetConsumer("mac1")+"="+messages.TargetSubject("mac1")
	for _, tc := range []struct {
		name         string
		medium       Medium
		targetedOnly bool
		consumers    []string
		done         string
	}{
		{"shared", shared, false, []string{convert}, converterDone},
		// A shared cache has no targeted work: --targeted-only leaves its converter the shared work.
		{"shared, targeted only", shared, true, []string{convert}, converterDone},
		{"objects", objects, false, []string{convert, mac1}, messages.DoneSubjectOf("mac1")},
		{"objects, targeted only", objects, true, []string{mac1}, messages.DoneSubjectOf("mac1")},
	} {
		consumers, done := tc.medium.Converter("mac1", tc.targetedOnly)
		if got := names(consumers); !slices.Equal(got, tc.consumers) || done != tc.done {
			t.Errorf("Converter, %s = %v, %q; want %v, %q", tc.name, got, done, tc.consumers, tc.done)
		}
	}

	// The modes' own jobs: the object store heals and sweeps beside the
	// verifier (which may delete objects), nowhere else; a shared cache with
	// a connection converts disks while they download beside the converter
	// (the connection is not used until the loop runs).
	log := slog.New(slog.DiscardHandler)
	hinted := sharedCache{nc: &nats.Conn{}}
	for _, tc := range []struct {
		medium   Medium
		stage    string
		handlers []string
		loops    int
	}{
		{shared, messages.StageVerifier, nil, 0},
		{shared, messages.StageCollector, nil, 0},
		{shared, messages.StageConverter, nil, 0},
		{hinted, messages.StageConverter, nil, 1},
		{hinted, messages.StageFetcher, nil, 0},
		{hinted, messages.StageVerifier, nil, 0},
		{objects, messages.StageVerifier, []string{messages.ConsumerHealer + "=" + messages.SubjectCorrupt}, 1},
		{objects, messages.StageFetcher, nil, 0},
		{objects, messages.StageConverter, nil, 0},
		{objects, messages.StageCollector, nil, 0},
	} {
		m := tc.medium.Maintain(tc.stage, Deps{}, log)
		var got []string
		for _, h := range m.Handlers {
			got = append(got, h.Consumer+"="+h.Filter)
			if h.Handler == nil {
				t.Errorf("Maintain(%s) of %T: consumer %s has no handler", tc.stage, tc.medium, h.Consumer)
			}
		}
		if !slices.Equal(got, tc.handlers) || len(m.Loops) != tc.loops {
			t.Errorf("Maintain(%s) of %T = %v and %d loops; want %v and %d", tc.stage, tc.medium, got, len(m.Loops), tc.handlers, tc.loops)
		}
	}
}

// TestMediumAdmits is the collector's admission table of both modes: for
// each kind of request, which publisher's done event for its disk — as that
// publisher sends it in the mode — the mode admits, and which converter
// failures. The checks every mode shares (the resolution's asset, the
// format published or converted, clones) are TestCollectorAdmits*'s.
func TestMediumAdmits(t *testing.T) {
	t.Parallel()
	shared, objects := sharedCache{}, testObjectMedium(t)
	const ok = ""
	type publisher struct {
		name, subject string
	}
	verifier := publisher{"verifier", messages.DoneSubject(messages.StageVerifier)}
	converter := publisher{"converter", messages.DoneSubject(messages.StageConverter)}
	mac1 := publisher{"converter on mac1", messages.DoneSubjectOf("mac1")}
	mac2 := publisher{"converter on mac2", messages.DoneSubjectOf("mac2")}
	publishers := []publisher{verifier, converter, mac1, mac2}
	// sent is the disk event pub sends in medium m: the verifier the disk as
	// published (qcow2), a converter the raw file it made, on its host when
	// it reports on its host's subject; with an object store, the object.
	sent := func(m Medium, pub publisher, ev messages.AssetEvent) messages.AssetEvent {
		if m == shared {
			ev.Object = nil
		}
		if pub != verifier {
			ev.Status, ev.FileFormat, ev.Size = messages.StatusConverted, image.FormatRaw, 99
		}
		if _, host, _ := messages.DonePublisher(pub.subject); host != "" {
			ev.Host, ev.Path = host, "/var/cache/vmprep/derived/disk"
		}
		return ev
	}

	for _, tc := range []struct {
		name           string
		medium         Medium
		target         string
		clientConverts bool
		// finished and failed: per publisher (in publishers' order), ok or
		// a word of the refusal.
		finished, failed [4]string
	}{
		// One shared cache: the collector finds every file itself, so only
		// the shared subjects speak, and the disk is what the request asked
		// for whatever its target or client-converts say (Next converts it).
		{name: "shared", medium: shared,
			finished: [4]string{"asked for", ok, "one shared cache", "one shared cache"},
			failed:   [4]string{ok, ok, "no per-host", "no per-host"}},
		{name: "shared, targeted", medium: shared, target: "mac1",
			finished: [4]string{"asked for", ok, "one shared cache", "one shared cache"},
			failed:   [4]string{ok, ok, "no per-host", "no per-host"}},
		{name: "shared, client converts", medium: shared, clientConverts: true,
			finished: [4]string{"asked for", ok, "one shared cache", "one shared cache"},
			failed:   [4]string{ok, ok, "no per-host", "no per-host"}},
		// An object store: converters report from their host's subject; a
		// targeted request only from its target's; a requester that
		// converts itself takes the disk from the verifier as published.
		{name: "objects", medium: objects,
			finished: [4]string{"asked for", "host's subject", ok, ok},
			failed:   [4]string{ok, "host's subject", ok, ok}},
		{name: "objects, targeted", medium: objects, target: "mac1",
			finished: [4]string{"targeted at mac1", "host's subject", ok, "targeted at mac1"},
			failed:   [4]string{ok, "host's subject", ok, "targeted at mac1"}},
		{name: "objects, client converts", medium: objects, clientConverts: true,
			finished: [4]string{ok, "host's subject", "requester converts", "requester converts"},
			failed:   [4]string{ok, "host's subject", "no converter had the request", "no converter had the request"}},
		{name: "objects, targeted, client converts", medium: objects, target: "mac1", clientConverts: true,
			finished: [4]string{"targeted at mac1", "host's subject", ok, "targeted at mac1"},
			failed:   [4]string{ok, "host's subject", ok, "targeted at mac1"}},
	} {
		st, evs := admitFixture(image.FormatRaw, tc.target, tc.clientConverts)
		for i, pub := range publishers {
			stageName, host, _ := messages.DonePublisher(pub.subject)
			finished := sent(tc.medium, pub, evs[image.RoleDisk])
			failed := finished
			failed.Status, failed.Failure = messages.StatusFailed, &messages.Failure{Stage: stageName, Cause: "x"}
			for _, c := range []struct {
				what string
				ev   messages.AssetEvent
				want string
			}{{"disk", finished, tc.finished[i]}, {"failure", failed, tc.failed[i]}} {
				err := tc.medium.Admit(&st, stageName, host, c.ev)
				switch {
				case c.want == ok && err != nil:
					t.Errorf("%s: %s from the %s refused: %v", tc.name, c.what, pub.name, err)
				case c.want != ok && (!errors.Is(err, errRefused) || !stage.IsPoison(err) || !strings.Contains(err.Error(), c.want)):
					t.Errorf("%s: %s from the %s = %v; want a refusal saying %q", tc.name, c.what, pub.name, err, c.want)
				}
			}
		}
	}
}
