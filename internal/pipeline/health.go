package pipeline

import (
	"errors"
	"fmt"
	"strings"
)

// Consuming reports nil while every stage runner of s is consuming (serving,
// its pulls reaching its consumer), else which are not: the liveness of a
// stage process.
func (s *Stages) Consuming() error {
	var stalled []string
	for _, r := range s.runners {
		if err := r.Drift(); err != nil {
			stalled = append(stalled, err.Error())
		} else if !r.Consuming() {
			stalled = append(stalled, r.Name())
		}
	}
	if len(stalled) > 0 {
		return fmt.Errorf("not consuming: %s", strings.Join(stalled, ", "))
	}
	return nil
}

// Drift reports nil while every stage's consumer is as vmprep setup made
// it, else what differs (see stage.ConsumerDrift): a readiness check.
func (s *Stages) Drift() error {
	var errs []error
	for _, r := range s.runners {
		errs = append(errs, r.Drift())
	}
	return errors.Join(errs...)
}

// Names lists the stages of s.
func (s *Stages) Names() []string {
	names := make([]string, len(s.runners))
	for i, r := range s.runners {
		names[i] = r.Name()
	}
	return names
}

// Consumers lists the durable consumers the embedded stages pull from.
func (e *Embedded) Consumers() []string {
	if e.bound == nil {
		return nil
	}
	return e.bound.Names()
}

// Live reports nil while the embedded deployment's stages are connected and
// consuming, else why not.
func (e *Embedded) Live() error {
	if e.stages == nil {
		if !e.Server.Running() {
			return errors.New("the NATS server is not running")
		}
		return nil
	}
	if !e.stages.IsConnected() {
		return fmt.Errorf("stages not connected to NATS (%s)", e.stages.Status())
	}
	return e.bound.Consuming()
}

// Ready reports nil while the embedded stages' consumers are as setup made
// them, else what differs.
func (e *Embedded) Ready() error {
	if e.bound == nil {
		return nil
	}
	return e.bound.Drift()
}

// runningTotal turns running totals (what progress callbacks report) into
// increments for add. A total below the last one starts over (a restarted
// read). It is called from one goroutine at a time.
func runningTotal(add func(int64)) func(total int64) {
	var last int64
	return func(total int64) {
		if total < last {
			last = 0
		}
		if d := total - last; d > 0 {
			add(d)
		}
		last = total
	}
}
