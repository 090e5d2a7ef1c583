package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestAcceptResult: which messages on a result subject the client takes
// as the collector's, live and stored (acceptResult), each made for real
// on an embedded server: published as the collector publishes (marked or
// not, or marked with another role), or relayed by the server as the
// answer to a direct get (with its relay headers, or none with "no_hdr")
// or to a pull request, naming the result subject as reply subject.
func TestAcceptResult(t *testing.T) {
	// internal/testutil imports this package: started here.
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, cfg := range []jetstream.StreamConfig{
		{Name: messages.StreamResults, Subjects: []string{messages.SubjectResultPrefix + ">"}, AllowDirect: true},
		// content a stage may write and direct-get (object metadata, its status)
		{Name: "OTHER", Subjects: []string{"other.>"}, AllowDirect: true},
	} {
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			t.Fatalf("create stream %s: %v", cfg.Name, err)
		}
	}
	if _, err = js.CreateConsumer(ctx, "OTHER", jetstream.ConsumerConfig{Durable: "puller", FilterSubject: "other.pulled.>", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	pub := stage.JetStreamPublisher{JS: js}
	publish := func(subject, writer string) {
		if err := pub.Publish(ctx, stage.Event{Subject: subject, Data: []byte(`{"v":1,"type":"result"}`), Writer: writer}); err != nil {
			t.Fatalf("publish %s: %v", subject, err)
		}
	}
	request := func(api, reply, body string) {
		if err := nc.PublishRequest(api, reply, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	const (
		taken    = "taken"
		unmarked = "unmarked"
		relayed  = "relayed"
		absent   = "absent" // nothing stored on the subject
	)
	for _, tc := range []struct {
		name, id     string
		make         func(subject string)
		live, stored string
	}{
		{"marked by the collector", "marked", func(s string) { publish(s, messages.ResultsWriter) }, taken, taken},
		{"unmarked (an older collector)", "unmarked", func(s string) { publish(s, "") }, unmarked, unmarked},
		{"marker of another role", "other-role", func(s string) { publish(s, "verifier") }, unmarked, unmarked},
		{"direct get relayed with its headers", "relayed", func(s string) {
			publish("other.got."+s, messages.ResultsWriter)
			request("$JS.API.DIRECT.GET.OTHER", s, `{"last_by_subj":"other.got.`+s+`"}`)
		}, relayed, relayed}, // stored: relayed twice (two Nats-Stream)
		{"direct get relayed with no_hdr", "no-hdr", func(s string) {
			publish("other.got."+s, messages.ResultsWriter)
			request("$JS.API.DIRECT.GET.OTHER", s, `{"last_by_subj":"other.got.`+s+`","no_hdr":true}`)
		}, unmarked, unmarked},
		{"pull request answered with a marked message", "pulled", func(s string) {
			publish("other.pulled."+s, messages.ResultsWriter)
			request("$JS.API.CONSUMER.MSG.NEXT.OTHER.puller", s, `{"batch":1}`)
		}, relayed, absent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subject := messages.ResultSubjectIn("bob", tc.id)
			sub, err := nc.SubscribeSync(subject)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			tc.make(subject)
			m, err := sub.NextMsg(30 * time.Second)
			if err != nil {
				t.Fatalf("nothing arrived on %s: %v", subject, err)
			}
			if got := verdict(acceptResult(m, subject, false)); got != tc.live {
				t.Errorf("live %q (headers %v): %s, want %s", m.Subject, m.Header, got, tc.live)
			}
			got := absent
			data, err := StoredResult(ctx, nc, subject)
			switch {
			case err != nil:
				got = verdict(err)
			case data != nil:
				got = taken
			default:
				// nil: none stored, or refused as relayed
				m, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+messages.StreamResults+"."+subject, nil)
				if err != nil {
					t.Fatal(err)
				}
				if m.Header.Get("Status") == "" {
					got = verdict(acceptResult(m, subject, true))
				}
			}
			if got != tc.stored {
				t.Errorf("stored: %s, want %s", got, tc.stored)
			}
		})
	}
}

func verdict(err error) string {
	switch {
	case err == nil:
		return "taken"
	case errors.Is(err, ErrResultUnmarked):
		return "unmarked"
	case errors.Is(err, errResultRelayed):
		return "relayed"
	}
	return "error: " + err.Error()
}
