package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestRelayCannotSpeakForAStage: the collector knows who speaks by the
// done subject (only converter_host-1 may publish on
// vmprep.asset.done.converter.host-1) and admits a file on host-1 only
// from there. A reply subject is not checked: the fetcher stores a done
// event of its own making as a lease value and direct-gets it naming
// host-1's done subject as reply subject — payload alone (no_hdr, which
// the server takes in the body of the last-by-subject form the fetcher is
// granted), with headers, or under a header block made by hand that
// carries host-1's marker and hides the server's relay markings behind a
// blank line. The work stream stores each there as a message the
// collector pulls. The collector (as the resolver user, as deployed) must
// take none of them as host-1's word, nor a direct publication carrying
// another party's marker, and still take host-1's own event.
func TestRelayCannotSpeakForAStage(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := connect("admin")
	adminJS, _ := jetstream.New(admin)
	host1 := messages.DoneSubjectOf("host-1")
	event := func(id string) []byte {
		ev := messages.AssetEvent{Namespace: "bob", RequestID: id, Status: messages.StatusConverted,
			Asset: image.Asset{Role: image.RoleDisk}, FileFormat: image.FormatRaw, Host: "host-1", Path: "/tmp/the-fetchers-disk.raw"}
		data, err := messages.Encode(messages.TypeAsset, &ev)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	fetcher := connect("fetcher")
	// relay stores data as a lease value (header block hdr, by the bare
	// protocol, if set; else marked writer) and has the server answer a
	// direct get of it on host-1's done subject.
	relay := func(id, writer, hdr, body string) {
		lease := "$KV." + messages.BucketLeases + "." + id
		if hdr != "" {
			testutil.RawPublish(t, admin.ConnectedUrl(), "fetcher", "s3cret-for-tests", lease, hdr, event(id))
		} else {
			m := nats.NewMsg(lease)
			m.Data = event(id)
			if writer != "" {
				m.Header.Set(stage.HeaderWriter, writer)
			}
			if _, err := fetcher.RequestMsg(m, 5*time.Second); err != nil {
				t.Fatalf("the fetcher writes a lease: %v", err)
			}
		}
		relayUntilStored(ctx, t, fetcher, adminJS, messages.StreamWork, host1, "$JS.API.DIRECT.GET.KV_"+messages.BucketLeases+"."+lease, []byte(body))
	}
	// publish publishes as user on subject, marked writer.
	publish := func(user, subject, id, writer string) {
		nc := connect(user)
		js, _ := jetstream.New(nc)
		m := nats.NewMsg(subject)
		m.Data = event(id)
		m.Header.Set(stage.HeaderWriter, writer)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("%s publishes on %s: %v", user, subject, err)
		}
	}
	host1Writer, _ := messages.DoneWriterOf(host1)
	tests := []struct {
		id     string
		send   func(id string)
		refuse bool
	}{
		{"no-hdr-relay", func(id string) { relay(id, "", "", `{"no_hdr":true}`) }, true},
		{"relay-with-headers", func(id string) { relay(id, host1Writer, "", "") }, true},
		{"hand-made-block", func(id string) {
			relay(id, "", "NATS/1.0\r\n"+stage.HeaderWriter+": "+host1Writer+"\r\n\r\n\r\n", "")
		}, true},
		{"fetchers-marker-on-host-1", func(id string) {
			publish(messages.TargetConsumer("host-1"), host1, id, messages.DoneWriter(messages.StageFetcher, ""))
		}, true},
		{"host-1s-marker-on-the-fetchers-subject", func(id string) {
			publish("fetcher", messages.DoneSubject(messages.StageFetcher), id, host1Writer)
		}, true},
		{"genuine", func(id string) { publish(messages.TargetConsumer("host-1"), host1, id, host1Writer) }, false},
	}
	for _, tt := range tests {
		tt.send(tt.id)
	}

	// The collector's consumer, read as the collector reads it.
	resolverJS, _ := jetstream.New(connect("resolver"))
	type verdict struct {
		id  string
		err error
	}
	heard := make(chan verdict, 2*len(tests))
	r, err := stage.New(ctx, resolverJS, messages.StreamWork, messages.StageCollector, messages.SubjectDone+".>",
		func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
			id, _ := messages.PeekRequestID(m.Data)
			heard <- verdict{id, pipeline.DoneFromPublisher(ctx, m)}
			return nil, nil
		}, stage.WithWriters(), stage.WithPullWait(200*time.Millisecond), stage.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(runCtx) }()
	defer func() { stop(); <-done }()
	verdicts := map[string]error{}
	for len(verdicts) < len(tests) {
		select {
		case v := <-heard:
			verdicts[v.id] = v.err
		case <-ctx.Done():
			t.Fatalf("the collector saw %d of %d done events", len(verdicts), len(tests))
		}
	}
	for _, tt := range tests {
		err, seen := verdicts[tt.id]
		switch {
		case !seen:
			t.Errorf("%s: never reached the collector", tt.id)
		case tt.refuse && (err == nil || !stage.IsPoison(err)):
			t.Errorf("%s: taken as its subject's publisher's word (%v)", tt.id, err)
		case !tt.refuse && err != nil:
			t.Errorf("%s: refused: %v", tt.id, err)
		case tt.refuse:
			t.Logf("%s: %v", tt.id, err)
		}
	}
	if err := verdicts["no-hdr-relay"]; err != nil && !errors.Is(err, stage.ErrNotWriter) {
		t.Errorf("the no_hdr relay was refused for another reason: %v", err)
	}
}
