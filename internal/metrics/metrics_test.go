package metrics_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
)

// TestEndpoint serves the metrics and probes on a real loopback listener and
// reads them back as Prometheus does.
func TestEndpoint(t *testing.T) {
	reg := metrics.NewRegistry("test-1")
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg); err == nil {
		t.Error("registered the vmprep metrics twice on one registry")
	}
	m.Stage("fetcher")
	m.Started("fetcher", 1)
	m.Settled("fetcher", stage.OutcomeRetry, 2*time.Second)
	m.Started("fetcher", 2)
	m.Started("fetcher", 1) // still in flight
	m.Settled("fetcher", stage.OutcomeOK, 3*time.Second)
	m.DeadLettered("fetcher")
	m.OriginBytes(1000)
	m.OriginBytes(-5) // ignored
	m.ObjectStoreBytes(metrics.ToObjectStore, 4096)
	m.LeaseWait(metrics.LeaseObjectAppeared, 1500*time.Millisecond)

	var liveErr error
	srv, err := metrics.Listen("127.0.0.1:0", metrics.Handler(reg, func() error { return liveErr }, func() error { return errors.New("consumers not bound yet") }), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	base := "http://" + srv.Addr()

	got := testutil.Scrape(t, base+"/metrics")
	tests := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"vmprep_messages_handled_total", []string{"stage", "fetcher", "outcome", "retry"}, 1},
		{"vmprep_messages_handled_total", []string{"stage", "fetcher", "outcome", "ok"}, 1},
		{"vmprep_messages_handled_total", []string{"stage", "fetcher", "outcome", "poison"}, 0},
		{"vmprep_message_redeliveries_total", []string{"stage", "fetcher"}, 1},
		{"vmprep_dead_letters_total", []string{"stage", "fetcher"}, 1},
		{"vmprep_in_flight", []string{"stage", "fetcher"}, 1},
		{"vmprep_handle_duration_seconds", []string{"stage", "fetcher"}, 2},
		{"vmprep_origin_bytes_total", nil, 1000},
		{"vmprep_object_store_bytes_total", []string{"direction", "put"}, 4096},
		{"vmprep_object_store_bytes_total", []string{"direction", "get"}, 0},
		{"vmprep_lease_wait_seconds", []string{"outcome", "object"}, 1},
		{"vmprep_build_info", []string{"version", "test-1"}, 1},
	}
	for _, tt := range tests {
		v, ok := got.Value(tt.name, tt.labels...)
		if !ok || v != tt.want {
			t.Errorf("%s%v = %v (present %v), want %v", tt.name, tt.labels, v, ok, tt.want)
		}
	}
	if _, ok := got.Value("go_goroutines"); !ok {
		t.Error("no Go runtime metrics")
	}

	code, body := testutil.Get(t, base+"/healthz")
	if code != http.StatusOK {
		t.Errorf("/healthz %d %q, want 200", code, body)
	}
	liveErr = errors.New("not connected to NATS")
	code, body = testutil.Get(t, base+"/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "not connected") {
		t.Errorf("/healthz %d %q, want 503 with the reason", code, body)
	}
	code, body = testutil.Get(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "not bound") {
		t.Errorf("/readyz %d %q, want 503 with the reason", code, body)
	}
}

// TestNilMetricsDoNothing: code that counts need not ask whether metrics are on.
func TestNilMetricsDoNothing(t *testing.T) {
	var m *metrics.Metrics
	m.Stage("x")
	m.Started("x", 2)
	m.Settled("x", stage.OutcomeOK, time.Second)
	m.DeadLettered("x")
	m.OriginBytes(1)
	m.ObjectStoreBytes(metrics.FromObjectStore, 1)
	m.LeaseWait(metrics.LeaseAcquired, 0)
	if m.Observer() != nil {
		t.Error("a nil Metrics has an observer")
	}
}
