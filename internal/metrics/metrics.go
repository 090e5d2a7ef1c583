// Package metrics is the Prometheus side of a vmprep process: the vmprep_*
// metrics, registered on a registry the caller passes in (nothing global),
// with typed methods for the code that counts; and the HTTP endpoint serving
// /metrics, /healthz and /readyz.
//
// Every method works on a nil *Metrics (and does nothing), so code that
// counts never has to ask whether metrics are on.
package metrics

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/stage"
)

// Direction says which way bytes moved between this process and the
// JetStream object store.
type Direction string

// Directions.
const (
	// ToObjectStore: bytes put into a bucket.
	ToObjectStore Direction = "put"
	// FromObjectStore: bytes read from a bucket.
	FromObjectStore Direction = "get"
)

// LeaseOutcome says how a wait for a per-digest download lease ended.
type LeaseOutcome string

// Lease wait outcomes.
const (
	// LeaseAcquired: this process took the lease (at once or after waiting).
	LeaseAcquired LeaseOutcome = "acquired"
	// LeaseObjectAppeared: another holder finished; its object is there.
	LeaseObjectAppeared LeaseOutcome = "object"
	// LeaseTakenOver: the holder's lease lapsed and this process took it.
	LeaseTakenOver LeaseOutcome = "taken_over"
	// LeaseAbandoned: the wait ended without either (cancelled, error).
	LeaseAbandoned LeaseOutcome = "abandoned"
)

// Metrics are the vmprep_* metrics of one process (or one embedded
// deployment), registered on a registry the caller owns.
type Metrics struct {
	handled      *prometheus.CounterVec
	redeliveries *prometheus.CounterVec
	deadLetters  *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	inFlight     *prometheus.GaugeVec
	originBytes  prometheus.Counter
	objectBytes  *prometheus.CounterVec
	leaseWait    *prometheus.HistogramVec
	drift        *prometheus.GaugeVec
	fleetState   *prometheus.GaugeVec
	fleetBytes   *prometheus.GaugeVec
	rollout      *prometheus.GaugeVec
}

// durationBuckets span a warm hand-off (milliseconds) to a multi-gigabyte
// download or conversion (tens of minutes).
var durationBuckets = []float64{0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// NewRegistry returns a fresh registry for one process: the Go runtime and
// process collectors and vmprep_build_info{version}.
func NewRegistry(version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vmprep_build_info",
		Help: "Always 1; the version label says which vmprep build runs.",
	}, []string{"version"})
	buildInfo.WithLabelValues(version).Set(1)
	reg.MustRegister(buildInfo, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// New registers the vmprep_* metrics on reg. It fails if reg already has them
// (one Metrics per registry).
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmprep_messages_handled_total",
			Help: "Deliveries settled by a stage, by outcome: ok, retry, permanent, exhausted, poison, drained.",
		}, []string{"stage", "outcome"}),
		redeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmprep_message_redeliveries_total",
			Help: "Deliveries that were not a message's first: retries after a transient error, and messages whose worker died or drained.",
		}, []string{"stage"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmprep_dead_letters_total",
			Help: "Dead letters published (messages no stage could process); see vmprep dead ls.",
		}, []string{"stage"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vmprep_handle_duration_seconds",
			Help:    "Time from a delivery's start to its settlement, by stage.",
			Buckets: durationBuckets,
		}, []string{"stage"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vmprep_in_flight",
			Help: "Deliveries being worked on now, by stage.",
		}, []string{"stage"}),
		originBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vmprep_origin_bytes_total",
			Help: "Bytes downloaded from origin servers (mirrors, cloud-image sites) by fetchers.",
		}),
		objectBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vmprep_object_store_bytes_total",
			Help: "Bytes moved between this process and the JetStream object store: put or get.",
		}, []string{"direction"}),
		leaseWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vmprep_lease_wait_seconds",
			Help:    "Time spent waiting for a per-digest download lease, by how the wait ended.",
			Buckets: durationBuckets,
		}, []string{"outcome"}),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vmprep_consumer_drift",
			Help: "1 while a stage's durable consumer differs from what vmprep setup made (the stage takes no work from it; vmprep status says what differs), else 0.",
		}, []string{"stage", "consumer"}),
		fleetState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vmprep_fleet_host_state",
			Help: "1 for the state (waiting, pulling, ready, failed) each host reports for each selection it matches, with the serial it is at (vmprep fleet status); exported by the resolver.",
		}, []string{"host", "selection", "state", "serial"}),
		fleetBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vmprep_fleet_host_bytes",
			Help: "Bytes of the build a host holds for a selection.",
		}, []string{"host", "selection"}),
		rollout: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vmprep_fleet_rollout_hosts",
			Help: "Hosts of a selection's rollout by phase: done (hold the target build), moving, failed, waiting; paused is 1 while the rollout is paused.",
		}, []string{"selection", "phase"}),
	}
	for _, c := range []prometheus.Collector{m.handled, m.redeliveries, m.deadLetters, m.duration, m.inFlight, m.originBytes, m.objectBytes, m.leaseWait, m.drift,
		m.fleetState, m.fleetBytes, m.rollout} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register vmprep metrics: %w", err)
		}
	}
	for _, d := range []Direction{ToObjectStore, FromObjectStore} {
		m.objectBytes.WithLabelValues(string(d)) // present (as 0) before the first byte
	}
	return m, nil
}

// Stage declares the series of a stage this process runs, so that they read
// 0 instead of being absent before its first message.
func (m *Metrics) Stage(name string) {
	if m == nil {
		return
	}
	m.inFlight.WithLabelValues(name)
	m.redeliveries.WithLabelValues(name)
	m.deadLetters.WithLabelValues(name)
	m.duration.WithLabelValues(name)
	for _, o := range []stage.Outcome{stage.OutcomeOK, stage.OutcomeRetry, stage.OutcomePermanent, stage.OutcomeExhausted, stage.OutcomePoison, stage.OutcomeDrained} {
		m.handled.WithLabelValues(name, string(o))
	}
}

// Started implements stage.Observer.
func (m *Metrics) Started(stageName string, delivery int) {
	if m == nil {
		return
	}
	m.inFlight.WithLabelValues(stageName).Inc()
	if delivery > 1 {
		m.redeliveries.WithLabelValues(stageName).Inc()
	}
}

// Settled implements stage.Observer.
func (m *Metrics) Settled(stageName string, outcome stage.Outcome, elapsed time.Duration) {
	if m == nil {
		return
	}
	m.inFlight.WithLabelValues(stageName).Dec()
	m.handled.WithLabelValues(stageName, string(outcome)).Inc()
	m.duration.WithLabelValues(stageName).Observe(elapsed.Seconds())
}

// DeadLettered implements stage.Observer.
func (m *Metrics) DeadLettered(stageName string) {
	if m == nil {
		return
	}
	m.deadLetters.WithLabelValues(stageName).Inc()
}

// OriginBytes counts n bytes received from an origin server.
func (m *Metrics) OriginBytes(n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.originBytes.Add(float64(n))
}

// ObjectStoreBytes counts n bytes put into (ToObjectStore) or read from
// (FromObjectStore) the object store.
func (m *Metrics) ObjectStoreBytes(d Direction, n int64) {
	if m == nil || n <= 0 {
		return
	}
	m.objectBytes.WithLabelValues(string(d)).Add(float64(n))
}

// LeaseWait records one wait for a download lease: how it ended and how long
// it took (zero when the lease was free at once).
func (m *Metrics) LeaseWait(outcome LeaseOutcome, waited time.Duration) {
	if m == nil {
		return
	}
	m.leaseWait.WithLabelValues(string(outcome)).Observe(waited.Seconds())
}

// ConsumerDrifted implements stage.DriftObserver.
func (m *Metrics) ConsumerDrifted(stageName, consumer string, drifted bool) {
	if m == nil {
		return
	}
	v := 0.0
	if drifted {
		v = 1
	}
	m.drift.WithLabelValues(stageName, consumer).Set(v)
}

// ObserveFleet sets the fleet gauges from the whole fleet state: each host
// × selection it matches, and each selection's rollout. Series of hosts
// and selections no longer there are dropped.
func (m *Metrics) ObserveFleet(f fleet.Fleet, progress map[string]fleet.Progress) {
	if m == nil {
		return
	}
	m.fleetState.Reset()
	m.fleetBytes.Reset()
	m.rollout.Reset()
	for _, sel := range f.Selections {
		id := sel.ID()
		for _, h := range f.Hosts {
			if !sel.Matches(h) {
				continue
			}
			st := f.Status[h][id]
			state := st.State
			if state == "" {
				state = fleet.StateWaiting
			}
			m.fleetState.WithLabelValues(h, id, string(state), st.Serial).Set(1)
			m.fleetBytes.WithLabelValues(h, id).Set(float64(st.Bytes))
		}
		p := progress[id]
		paused := 0.0
		if p.Paused {
			paused = 1
		}
		for phase, n := range map[string]float64{"done": float64(p.Done), "moving": float64(p.Moving), "failed": float64(p.Failed), "waiting": float64(p.Waiting), "paused": paused} {
			m.rollout.WithLabelValues(id, phase).Set(n)
		}
	}
}

// Observer returns m as a stage.Observer, or nil when m is nil (so that
// stage.WithObserver keeps the runner's default).
func (m *Metrics) Observer() stage.Observer {
	if m == nil {
		return nil
	}
	return m
}

var (
	_ stage.Observer      = (*Metrics)(nil)
	_ stage.DriftObserver = (*Metrics)(nil)
)
