package main

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/pkg/messages"
)

// TestConvertAheadPermissions: under deploy/nats/auth.conf the fetcher's
// hint that a disk is downloading (vmprep.ahead) reaches the converters'
// queue group, and no one else may send it or listen to it.
func TestConvertAheadPermissions(t *testing.T) {
	connect := fleetUsers(t)
	// as connects as user and returns the permission violations the
	// server reports to it.
	as := func(user string) (*nats.Conn, <-chan error) {
		t.Helper()
		violations := make(chan error, 16)
		nc := connect(user, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if strings.Contains(err.Error(), "Permissions Violation") {
				violations <- err
			}
		}))
		return nc, violations
	}

	conv, convDenied := as("converter")
	sub, err := conv.QueueSubscribeSync(messages.SubjectConvertAhead, messages.QueueConvertAhead)
	if err != nil {
		t.Fatal(err)
	}
	if err := conv.Flush(); err != nil {
		t.Fatal(err)
	}
	fetcher, fetcherDenied := as("fetcher")
	if err := fetcher.Publish(messages.SubjectConvertAhead, []byte("hint")); err != nil {
		t.Fatal(err)
	}
	if err := fetcher.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(30 * time.Second); err != nil || string(m.Data) != "hint" {
		t.Fatalf("the converter did not get the fetcher's hint: %v", err)
	}
	select {
	case err := <-convDenied:
		t.Fatalf("converter: %v", err)
	case err := <-fetcherDenied:
		t.Fatalf("fetcher: %v", err)
	default:
	}

	subscribe := func(queue string) func(*nats.Conn) error {
		return func(nc *nats.Conn) error {
			if queue == "" {
				_, err := nc.SubscribeSync(messages.SubjectConvertAhead)
				return err
			}
			_, err := nc.QueueSubscribeSync(messages.SubjectConvertAhead, queue)
			return err
		}
	}
	publish := func(nc *nats.Conn) error { return nc.Publish(messages.SubjectConvertAhead, []byte("forged")) }
	for _, tc := range []struct {
		what, user string
		do         func(*nats.Conn) error
	}{
		{"client sends a hint", "alice", publish},
		{"converter sends a hint", "converter", publish},
		{"resolver sends a hint", "resolver", publish},
		{"client listens to hints", "alice", subscribe("")},
		{"client joins the converters' queue", "alice", subscribe(messages.QueueConvertAhead)},
		{"verifier listens to hints", "verifier", subscribe(messages.QueueConvertAhead)},
		{"converter listens outside its queue group", "converter", subscribe("")},
		{"converter listens in another queue group", "converter", subscribe("mine")},
		{"a converter host's user (object store: no hints) listens", "converter_host-1", subscribe(messages.QueueConvertAhead)},
	} {
		t.Run(tc.what, func(t *testing.T) {
			nc, denied := as(tc.user)
			if err := tc.do(nc); err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-denied:
				t.Logf("refused: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("the server did not refuse it")
			}
		})
	}
}
