package pipeline_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/pkg/messages"
)

// A process starting against streams an operator changed leaves them as
// they are and says how they differ.
func TestSetupKeepsOperatorChanges(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{ObjectBucket: "b"}); err != nil {
		t.Fatal(err)
	}
	// The operator keeps results for a day instead of a week.
	s, err := js.Stream(ctx, messages.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.MaxAge = 24 * time.Hour
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{ObjectBucket: "b", Logger: log}); err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, messages.StreamResults)
	if got := s.CachedInfo().Config.MaxAge; got != 24*time.Hour {
		t.Fatalf("setup reverted the operator's max age to %s", got)
	}
	if !strings.Contains(logs.String(), messages.StreamResults) || !strings.Contains(logs.String(), "max age 24h0m0s") {
		t.Fatalf("no drift warning: %s", logs.String())
	}
	// A stream without a subject the stages need is refused, not silently used.
	w, _ := js.Stream(ctx, messages.StreamWork)
	wcfg := w.CachedInfo().Config
	wcfg.Subjects = []string{messages.SubjectPrepare}
	if _, err := js.UpdateStream(ctx, wcfg); err != nil {
		t.Fatal(err)
	}
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{}); err == nil || !strings.Contains(err.Error(), "vmprep.asset.>") {
		t.Fatalf("setup against a work stream without the asset subjects: %v", err)
	}
}
