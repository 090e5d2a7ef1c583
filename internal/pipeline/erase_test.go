package pipeline_test

import (
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestPrepareSurvivesStateErasure: an attacker overwrites bob's request
// state with the server's answer to $JS.API.INFO (its subject named as
// reply subject) right after the first writes the resolver and collector
// make to it. Every reader must still read the owner's last state, and
// every compare-and-set must land over the attacker's entry: bob's
// request completes as if nobody had touched it. (Erasing after every
// write attempt — a failed compare-and-set is published on the subject
// too — turns the collectors' contention into a flood past the bucket's
// history: ErrTampered, TestReplyRelayErasures.)
func TestPrepareSurvivesStateErasure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testmirror.New(t))
	emb := e.start(t)
	attacker, err := emb.Server.Connect(nats.Name("attacker"))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	// Fewer than the bucket keeps per key, so the owner's last entry stays.
	const maxErasures = stage.OwnedHistory / 2
	var erased atomic.Int64
	sub, err := attacker.Subscribe("$KV."+messages.BucketRequests+".>", func(m *nats.Msg) {
		if m.Header.Get(stage.HeaderWriter) == "" || erased.Load() >= maxErasures {
			return // the attacker's own entry, or enough
		}
		if attacker.PublishRequest("$JS.API.INFO", m.Subject, nil) == nil {
			erased.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: client.NewRequestID(),
		Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}, Format: image.FormatQCOW2})
	if res.Status != messages.ResultPrepared {
		t.Errorf("bob's request, its state erased after every write: %s %+v", res.Status, res.Failure)
	}
	if erased.Load() == 0 {
		t.Fatal("the attacker erased nothing: the attack did not run")
	}
	t.Logf("%d erasures", erased.Load())
}
