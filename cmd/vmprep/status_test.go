package main

import (
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/ops"
)

// TestProcessesServingCountsProcesses: one process running five stages
// (vmprep serve) announces an entry per stage, each naming all five
// consumers; status counted it five times for each stage.
func TestProcessesServingCountsProcesses(t *testing.T) {
	started := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	all := []string{"resolver", "collector", "fetcher", "verifier", "converter"}
	var ps []ops.Process
	for _, s := range all {
		ps = append(ps, ops.Process{Stage: s, Host: "h1", PID: 7, Started: started, Consumers: all})
	}
	// A second process: a fetcher on another host.
	ps = append(ps, ops.Process{Stage: "fetcher", Host: "h2", PID: 7, Started: started, Consumers: []string{"fetcher"}})
	for _, tc := range []struct {
		consumer string
		want     int
	}{{"resolver", 1}, {"fetcher", 2}, {"converter_mac1", 0}} {
		if got := processesServing(ps, tc.consumer); got != tc.want {
			t.Errorf("processesServing(%s) = %d, want %d", tc.consumer, got, tc.want)
		}
	}
}
