package stage

import (
	"errors"
	"testing"
	"time"
)

// TestKeepAliveLog: a keep-alive that keeps failing is logged once per
// interval, not once per tick, and its recovery once.
func TestKeepAliveLog(t *testing.T) {
	t.Parallel()
	down := errors.New("connection closed")
	t0 := time.Unix(1_000_000, 0)
	tick := 10 * time.Second // ackWait/3 with the default ack wait
	type step struct {
		err        error
		at         time.Duration
		wantLog    bool
		wantStreak int
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"successes are quiet", []step{{nil, 0, false, 0}, {nil, tick, false, 0}}},
		{"first failure, then one line per interval", []step{
			{down, 0, true, 1},
			{down, tick, false, 2},
			{down, 2 * tick, false, 3},
			{down, 3 * tick, true, 4}, // every = 3 ticks
			{down, 4 * tick, false, 5},
			{down, 6 * tick, true, 6},
		}},
		{"recovery is logged once", []step{
			{down, 0, true, 1},
			{down, tick, false, 2},
			{nil, 2 * tick, true, 2},
			{nil, 3 * tick, false, 0},
		}},
		{"a new streak logs at once", []step{
			{down, 0, true, 1},
			{nil, tick, true, 1},
			{down, 2 * tick, true, 1},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := keepAliveLog{every: 3 * tick}
			for i, s := range tc.steps {
				streak, log := k.note(s.err, t0.Add(s.at))
				if log != s.wantLog || streak != s.wantStreak {
					t.Errorf("step %d (err=%v at %v): log=%v streak=%d, want log=%v streak=%d",
						i, s.err, s.at, log, streak, s.wantLog, s.wantStreak)
				}
			}
		})
	}
}
