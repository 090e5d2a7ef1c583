package metrics_test

import (
	"testing"

	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/testutil"
)

// The fleet gauges: one state series per host × matching selection, bytes,
// and the rollout by phase; a selection that goes away takes its series along.
func TestObserveFleet(t *testing.T) {
	reg := metrics.NewRegistry("test-1")
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := fleet.Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "host-*"}.Normalize(false)
	if err != nil {
		t.Fatal(err)
	}
	id := sel.ID()
	f := fleet.Fleet{
		Selections: []fleet.Selection{sel},
		Hosts:      []string{"host-1", "host-2", "other"},
		Status:     map[string]map[string]fleet.Status{"host-1": {id: {Serial: "s1", State: fleet.StateReady, Held: "s1", Bytes: 4096}}},
	}
	m.ObserveFleet(f, map[string]fleet.Progress{id: {Target: "s1", Hosts: 2, Done: 1, Moving: 1}})
	srv, err := metrics.Listen("127.0.0.1:0", metrics.Handler(reg, nil, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := "http://" + srv.Addr() + "/metrics"
	got := testutil.Scrape(t, url)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"vmprep_fleet_host_state", []string{"host", "host-1", "selection", id, "state", "ready", "serial", "s1"}, 1},
		{"vmprep_fleet_host_state", []string{"host", "host-2", "selection", id, "state", "waiting", "serial", ""}, 1},
		{"vmprep_fleet_host_bytes", []string{"host", "host-1", "selection", id}, 4096},
		{"vmprep_fleet_rollout_hosts", []string{"selection", id, "phase", "done"}, 1},
		{"vmprep_fleet_rollout_hosts", []string{"selection", id, "phase", "moving"}, 1},
	} {
		if v, ok := got.Value(tc.name, tc.labels...); !ok || v != tc.want {
			t.Errorf("%s%v = %v (%v), want %v", tc.name, tc.labels, v, ok, tc.want)
		}
	}
	if _, ok := got.Value("vmprep_fleet_host_bytes", "host", "other", "selection", id); ok {
		t.Error("a host the selection does not match has a series")
	}
	m.ObserveFleet(fleet.Fleet{Hosts: f.Hosts}, nil)
	if _, ok := testutil.Scrape(t, url).Value("vmprep_fleet_host_bytes", "host", "host-1", "selection", id); ok {
		t.Error("the series of a removed selection stayed")
	}
}
