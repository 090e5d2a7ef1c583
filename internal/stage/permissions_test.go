package stage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/natsembed"
)

func TestDenied(t *testing.T) {
	t.Parallel()
	violation := func(subject string) error {
		return fmt.Errorf("%w: Permissions Violation for Publish to %q", nats.ErrPermissionViolation, subject)
	}
	for _, tc := range []struct {
		err     error
		subject string
		want    bool
	}{
		{violation("$JS.API.STREAM.CREATE.VMPREP_WORK"), "$JS.API.STREAM.CREATE.VMPREP_WORK", true},
		{violation("$JS.API.CONSUMER.CREATE.VMPREP_WORK.fetcher.vmprep.asset.fetch"), "$JS.API.CONSUMER.CREATE.VMPREP_WORK.fetcher", true},
		// another stream whose name starts the same, another consumer
		{violation("$JS.API.STREAM.CREATE.VMPREP_WORK2"), "$JS.API.STREAM.CREATE.VMPREP_WORK", false},
		{violation("$JS.API.CONSUMER.CREATE.VMPREP_WORK.fetcher2"), "$JS.API.CONSUMER.CREATE.VMPREP_WORK.fetcher", false},
		{fmt.Errorf("%w: Permissions Violation for Subscription to %q", nats.ErrPermissionViolation, "$JS.API.STREAM.CREATE.VMPREP_WORK"), "$JS.API.STREAM.CREATE.VMPREP_WORK", false},
		{errors.New(`publish to "$JS.API.STREAM.CREATE.VMPREP_WORK"`), "$JS.API.STREAM.CREATE.VMPREP_WORK", false},
		{nil, "$JS.API.STREAM.CREATE.VMPREP_WORK", false},
	} {
		if got := Denied(tc.err, tc.subject); got != tc.want {
			t.Errorf("Denied(%v, %q) = %v, want %v", tc.err, tc.subject, got, tc.want)
		}
	}
}

// TestDeniedByARealServer pins the wording Denied parses to what the
// nats-server we ship says: a user that may not create a stream is told so
// at once, and a refusal of another subject is not taken for it.
func TestDeniedByARealServer(t *testing.T) {
	t.Parallel()
	const stream = "VMPREP_WORK"
	// In-process only (no listener, so not nats-server's default port).
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Config: &server.Options{
		DontListen: true,
		Users: []*server.User{{Username: "stage", Password: "stage-pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.INFO", "$JS.API.STREAM.INFO.>"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	// The refusal is read from LastError; the default handler would print it.
	nc, err := srv.Connect(nats.UserInfo("stage", "stage-pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// Far longer than a refusal takes to arrive: a Create that waits it out
	// did not see the refusal.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	apiSubject := "$JS.API.STREAM.CREATE." + stream
	err = Create(ctx, nc, "stream "+stream, apiSubject, func(ctx context.Context) error {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{"work.>"}})
		return err
	})
	if !errors.Is(err, ErrCreateDenied) || ctx.Err() != nil {
		t.Fatalf("creating a stream without the right: %v (context: %v), want ErrCreateDenied at once", err, ctx.Err())
	}
	refusal := nc.LastError()
	if !errors.Is(refusal, nats.ErrPermissionViolation) || !strings.Contains(refusal.Error(), `Publish to "`+apiSubject+`"`) {
		t.Fatalf("the server's refusal reads %q: Denied expects `Publish to %q`", refusal, apiSubject)
	}
	tests := []struct {
		subject string
		want    bool
	}{
		{apiSubject, true},
		{"$JS.API.STREAM.CREATE", true}, // a prefix of it, as whole tokens
		{apiSubject + "2", false},
		{"$JS.API.CONSUMER.CREATE." + stream, false},
	}
	for _, tt := range tests {
		if got := Denied(refusal, tt.subject); got != tt.want {
			t.Errorf("Denied(%q, %q) = %v, want %v", refusal, tt.subject, got, tt.want)
		}
	}
}
