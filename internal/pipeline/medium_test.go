package pipeline

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
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
}
