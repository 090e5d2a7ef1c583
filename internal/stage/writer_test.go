package stage_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
)

// TestWriterReadsTheStoredBlockWhole: a runner built WithWriters tells its
// handler who wrote each message — the writer marker of the message as its
// stream stores it — and refuses (ErrNotWriter) every message that cannot
// be its subject's publisher's: unmarked, marked twice, relayed by the
// server from another stream (a direct get naming the subject as reply
// subject, with headers or payload alone), or under a header block made by
// hand whose blank line hides the rest from nats.go.
func TestWriterReadsTheStoredBlockWhole(t *testing.T) {
	t.Parallel()
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: testStream, Subjects: []string{inSubject}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	// What a party writes and may direct-get: the source of relays.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SRC", Subjects: []string{"src.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	marked := func(subject, data string, writers ...string) *nats.Msg {
		m := nats.NewMsg(subject)
		m.Data = []byte(data)
		for _, w := range writers {
			m.Header.Add(stage.HeaderWriter, w)
		}
		return m
	}
	relay := func(data, body string) {
		if _, err := js.PublishMsg(ctx, marked("src."+data, data, "owner")); err != nil {
			t.Fatal(err)
		}
		if err := nc.PublishRequest("$JS.API.DIRECT.GET.SRC.src."+data, inSubject, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		data string
		// send puts the message on inSubject.
		send   func(data string)
		writer string // "" refused
	}{
		{data: "genuine", writer: "owner", send: func(data string) {
			if _, err := js.PublishMsg(ctx, marked(inSubject, data, "owner")); err != nil {
				t.Fatal(err)
			}
		}},
		{data: "unmarked", send: func(data string) {
			if _, err := js.Publish(ctx, inSubject, []byte(data)); err != nil {
				t.Fatal(err)
			}
		}},
		{data: "marked-twice", send: func(data string) {
			if _, err := js.PublishMsg(ctx, marked(inSubject, data, "owner", "other")); err != nil {
				t.Fatal(err)
			}
		}},
		{data: "relayed-with-headers", send: func(data string) { relay(data, "") }},
		{data: "relayed-no-hdr", send: func(data string) { relay(data, `{"no_hdr":true}`) }},
		{data: "hand-made-block", send: func(data string) {
			// A blank line inside the block, the server's markings of a
			// relay after it (the bare protocol: nats.go cleans headers).
			testutil.RawPublish(t, srv.ClientURL(), "", "", inSubject, "NATS/1.0\r\n"+stage.HeaderWriter+": owner\r\n\r\nNats-Stream: SRC\r\nNats-Subject: src.x\r\n\r\n", []byte(data))
		}},
	}
	type seen struct {
		delivered nats.Header
		writer    string
		err       error
	}
	var mu sync.Mutex
	got := map[string]seen{}
	runRunner(t, js, func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		w, err := m.Writer(ctx)
		mu.Lock()
		got[string(m.Data)] = seen{m.Header, w, err}
		mu.Unlock()
		return nil, nil
	}, stage.WithWriters())
	for _, tt := range tests {
		tt.send(tt.data)
	}
	waitFor(t, "every message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(tests)
	})
	for _, tt := range tests {
		g := got[tt.data]
		switch {
		case tt.writer != "" && (g.err != nil || g.writer != tt.writer):
			t.Errorf("%s: writer %q, %v; want %q", tt.data, g.writer, g.err, tt.writer)
		case tt.writer == "" && !errors.Is(g.err, stage.ErrNotWriter):
			t.Errorf("%s: writer %q, %v; want it refused (ErrNotWriter)", tt.data, g.writer, g.err)
		case tt.writer == "":
			t.Logf("%s: %v", tt.data, g.err)
		}
	}
	// What the delivery alone shows of the hand-made block: the owner's
	// marker and nothing else, as a genuine message would.
	if h := got["hand-made-block"].delivered; h.Get(stage.HeaderWriter) != "owner" || len(h) != 1 {
		t.Errorf("the hand-made block was delivered as %v: the case does not hide anything", h)
	}
	// A message from a handler's own caller, not a runner's.
	if _, err := (stage.Message{Subject: inSubject}).Writer(ctx); err == nil || errors.Is(err, stage.ErrNotWriter) {
		t.Errorf("a message not from a runner WithWriters: %v", err)
	}
}
