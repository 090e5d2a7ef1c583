package pipeline_test

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/messages"
)

// A process starting against streams an operator changed leaves them as
// they are and says how they differ.
func TestSetupKeepsOperatorChanges(t *testing.T) {
	t.Parallel()
	_, _, js := testutil.EmbeddedJetStream(t)
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
	// A stream of an older build — results on vmprep.result.* and requests
	// on vmprep.prepare only — gets the subjects this build needs (the
	// wildcard that covers an old one replaces it), and keeps the rest.
	for name, old := range map[string][]string{
		messages.StreamResults: {"vmprep.result.*"},
		messages.StreamWork:    {messages.SubjectPrepare, "vmprep.asset.>"},
	} {
		st, _ := js.Stream(ctx, name)
		c := st.CachedInfo().Config
		c.Subjects = old
		c.AllowDirect = false // an older build's results had no direct gets
		if _, err := js.UpdateStream(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	logs.Reset()
	if _, err := pipeline.Setup(ctx, js, pipeline.SetupConfig{Logger: log}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{
		messages.StreamResults: {"vmprep.result.>"},
		messages.StreamWork:    {messages.SubjectPrepare, messages.SubjectPrepare + ".>", "vmprep.asset.>"},
	} {
		st, _ := js.Stream(ctx, name)
		got := st.CachedInfo().Config.Subjects
		if !sameStrings(got, want) {
			t.Errorf("%s subjects %v, want %v", name, got, want)
		}
	}
	s, _ = js.Stream(ctx, messages.StreamResults)
	if got := s.CachedInfo().Config.MaxAge; got != 24*time.Hour {
		t.Fatalf("adding subjects reverted the operator's max age to %s", got)
	}
	if !s.CachedInfo().Config.AllowDirect {
		t.Errorf("%s of an older build was left without direct gets, which clients read it by", messages.StreamResults)
	}
	if !strings.Contains(logs.String(), "added the subjects") {
		t.Errorf("no word about the added subjects: %s", logs.String())
	}
}

func sameStrings(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
