package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestClientsCannotRelayOrEnumerate runs deploy/nats as a three-node
// cluster. alice's prepare works with her permissions — the result by
// direct get and subscription, the objects by batched direct gets — while
// every way for her to make the server deliver onto another subject (a push
// consumer of the results, of the objects, of the request state) and every
// way to list another namespace's request ids (STREAM.INFO with a subjects
// filter) is refused by the server.
func TestClientsCannotRelayOrEnumerate(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	d := startDeployment(t, "resolver", "fetcher", "verifier")
	c, as := d.c, d.as

	// Her prepare works: one for herself (she pulls and converts), and one
	// that bob makes first, so that some other namespace has request ids.
	bobRes := c.Prepare(image.ArchAMD64, image.FormatQCOW2, append(as("bob")[2:], "--cache-dir", t.TempDir())...).Result(t, 3*time.Minute)
	aliceCache := t.TempDir()
	res := c.Prepare(image.ArchAMD64, image.FormatRaw, append(as("alice")[2:], "--cache-dir", aliceCache)...).Result(t, 3*time.Minute)
	checkPrepared(t, "alice", d.m, "24.04", image.ArchAMD64, res, under(t, aliceCache))

	bobProgress := messages.ProgressSubjectIn("bob", bobRes.RequestID)
	push := func(stream, filter string) func(context.Context, *nats.Conn) error {
		return func(ctx context.Context, nc *nats.Conn) error {
			body := `{"stream_name":"` + stream + `","config":{"deliver_subject":"` + bobProgress + `","filter_subject":"` + filter + `","ack_policy":"none","deliver_policy":"all"}}`
			_, err := nc.RequestWithContext(ctx, "$JS.API.CONSUMER.CREATE."+stream, []byte(body))
			return err
		}
	}
	streamInfo := func(stream, filter string) func(context.Context, *nats.Conn) error {
		return func(ctx context.Context, nc *nats.Conn) error {
			_, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.INFO."+stream, []byte(`{"subjects_filter":"`+filter+`"}`))
			return err
		}
	}
	attempts := []struct {
		name, subject string
		do            func(context.Context, *nats.Conn) error
	}{
		{"push consumer of her results delivering onto bob's progress", "$JS.API.CONSUMER.CREATE.VMPREP_RESULTS",
			push(messages.StreamResults, messages.ResultSubjectIn("alice", res.RequestID))},
		{"named push consumer of her results", "$JS.API.CONSUMER.CREATE.VMPREP_RESULTS.relay." + messages.ResultSubjectIn("alice", res.RequestID), func(ctx context.Context, nc *nats.Conn) error {
			subject := "$JS.API.CONSUMER.CREATE.VMPREP_RESULTS.relay." + messages.ResultSubjectIn("alice", res.RequestID)
			body := `{"stream_name":"VMPREP_RESULTS","config":{"name":"relay","deliver_subject":"` + bobProgress + `","filter_subject":"` + messages.ResultSubjectIn("alice", res.RequestID) + `","ack_policy":"none"}}`
			_, err := nc.RequestWithContext(ctx, subject, []byte(body))
			return err
		}},
		{"push consumer of the objects onto bob's progress", "$JS.API.CONSUMER.CREATE.OBJ_vmprep",
			push("OBJ_vmprep", "$O.vmprep.C.>")},
		{"list bob's request ids from the request state", "$JS.API.STREAM.INFO.KV_VMPREP_REQUESTS",
			streamInfo("KV_VMPREP_REQUESTS", "$KV.VMPREP_REQUESTS.bob.*")},
		{"list bob's request ids from the results", "$JS.API.STREAM.INFO.VMPREP_RESULTS",
			streamInfo(messages.StreamResults, "vmprep.result.bob.*")},
		{"list queued work", "$JS.API.STREAM.INFO.VMPREP_WORK",
			streamInfo(messages.StreamWork, "vmprep.>")},
		{"direct get bob's result", "$JS.API.DIRECT.GET.VMPREP_RESULTS." + messages.ResultSubjectIn("bob", bobRes.RequestID), func(ctx context.Context, nc *nats.Conn) error {
			_, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.VMPREP_RESULTS."+messages.ResultSubjectIn("bob", bobRes.RequestID), nil)
			return err
		}},
		{"subscribe to bob's results", "vmprep.result.bob.>", func(ctx context.Context, nc *nats.Conn) error {
			return subscribeFlush(nc, "vmprep.result.bob.>")
		}},
	}
	watch, _, _ := d.connect("bob")
	relayed, err := watch.SubscribeSync(bobProgress)
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, a := range attempts {
		t.Run(a.name, func(t *testing.T) {
			nc, _, errs := d.connect("alice")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := a.do(ctx, nc); err == nil {
				t.Errorf("%s: answered", a.name)
			}
			select {
			case err := <-errs:
				if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), `"`+a.subject) {
					t.Errorf("%s: %v, want a permissions violation naming %q", a.name, err, a.subject)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no permissions violation from the server", a.name)
			}
		})
	}
	if m, err := relayed.NextMsg(2 * time.Second); err == nil {
		t.Errorf("bob's progress subject got a relayed message of %d bytes", len(m.Data))
	}
	// Nor can she still read what she needs in the old ways: nothing
	// she runs needs a consumer.
	_, ajs, _ := d.connect("alice")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := ajs.OrderedConsumer(ctx, messages.StreamResults, jetstream.OrderedConsumerConfig{FilterSubjects: []string{messages.ResultSubjectIn("alice", res.RequestID)}}); err == nil {
		t.Error("alice may still create a consumer of her results")
	}
}
