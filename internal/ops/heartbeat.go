// Package ops is what an operator uses to see and repair a running vmprep
// deployment: which stage processes are alive (each announces itself in a KV
// bucket), the backlog of every stage, one request's state, and the dead
// letters, which can be replayed after a fix.
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/stage"
)

// BucketProcesses is the KV bucket (stream KV_VMPREP_PROCESSES) where every
// stage process keeps an entry per stage it runs, key
// "<stage>.<host>.<pid>", refreshed every HeartbeatInterval. Entries expire
// ProcessTTL after the last refresh, so a process that died without a word
// disappears by itself; one that stops cleanly deletes its entries.
const BucketProcesses = "VMPREP_PROCESSES"

// Liveness timing.
const (
	HeartbeatInterval = 10 * time.Second
	ProcessTTL        = 3 * HeartbeatInterval
)

// Process is one stage of one live process, as announced.
type Process struct {
	Stage       string `json:"stage"`
	Host        string `json:"host"`
	PID         int    `json:"pid"`
	Name        string `json:"name,omitempty"` // the NATS connection name
	Version     string `json:"version,omitempty"`
	Concurrency int    `json:"concurrency,omitempty"`
	// Consumers are the durable consumers the process pulls from (a
	// targeted converter's is converter_<host>).
	Consumers []string  `json:"consumers,omitempty"`
	Started   time.Time `json:"started"`
	Seen      time.Time `json:"seen"`
	// Consuming is false when the process's pulls are failing (see /healthz).
	Consuming bool   `json:"consuming"`
	Problem   string `json:"problem,omitempty"`
}

// Serves reports whether the process pulls from the durable consumer named
// consumer: its stage's, or another it announced (converter_<host>).
func (p Process) Serves(consumer string) bool {
	return p.Stage == consumer || slices.Contains(p.Consumers, consumer)
}

var unsafeKeyChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// key is the process's KV key for stage: three tokens, whatever the host is called.
func (p Process) key() string {
	host := unsafeKeyChars.ReplaceAllString(p.Host, "-")
	if host == "" {
		host = "unknown"
	}
	return fmt.Sprintf("%s.%s.%d", p.Stage, host, p.PID)
}

// ProcessBucket binds the liveness bucket, creating it if it is missing
// (vmprep setup does, as the operator; a stage whose user may only write
// entries binds what setup made).
func ProcessBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, BucketProcesses)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		err = stage.Create(ctx, js.Conn(), "key-value bucket "+BucketProcesses, "$JS.API.STREAM.CREATE.KV_"+BucketProcesses, func(ctx context.Context) (err error) {
			kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket:      BucketProcesses,
				Description: "vmprep live stage processes: one entry per stage of each process, expiring when not refreshed",
				History:     1,
				TTL:         ProcessTTL,
				Storage:     jetstream.MemoryStorage,
			})
			return err
		})
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			kv, err = js.KeyValue(ctx, BucketProcesses)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("liveness bucket %s: %w", BucketProcesses, err)
	}
	return kv, nil
}

// startGrace is how long a starting process's first liveness entry waits
// for its stages to consume.
const startGrace = 5 * time.Second

// Announce keeps an entry for each of stages in BucketProcesses until ctx
// ends, then deletes them. consuming (optional) is asked at each refresh.
// Liveness is informational: failures are logged, never fatal.
func Announce(ctx context.Context, js jetstream.JetStream, stages []string, self Process, consuming func() error, log *slog.Logger) {
	if self.Host == "" {
		self.Host, _ = os.Hostname()
	}
	if self.PID == 0 {
		self.PID = os.Getpid()
	}
	if self.Started.IsZero() {
		self.Started = time.Now().UTC()
	}
	var kv jetstream.KeyValue
	warned := false
	refresh := func() {
		var err error
		if kv == nil {
			if kv, err = ProcessBucket(ctx, js); err != nil {
				if !warned {
					log.Warn("cannot announce this process; vmprep status will not list it", "err", err)
					warned = true
				}
				return
			}
		}
		p := self
		p.Seen, p.Consuming, p.Problem = time.Now().UTC(), true, ""
		if consuming != nil {
			if cerr := consuming(); cerr != nil {
				p.Consuming, p.Problem = false, cerr.Error()
			}
		}
		for _, s := range stages {
			p.Stage = s
			b, _ := json.Marshal(p)
			if _, err = kv.Put(ctx, p.key(), b); err != nil && ctx.Err() == nil && !warned {
				log.Warn("cannot refresh this process's liveness entry", "err", err)
				warned = true
			}
		}
	}
	// The first entry is written as the process starts, before its
	// runners' first pulls: give them a moment, so that a healthy process is
	// not listed as "not consuming" until the next refresh.
	for deadline := time.Now().Add(startGrace); consuming != nil && consuming() != nil && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	refresh()
	t := time.NewTicker(HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if kv != nil {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				for _, s := range stages {
					p := self
					p.Stage = s
					if err := kv.Delete(dctx, p.key()); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
						log.Debug("cannot remove this process's liveness entry", "err", err)
					}
				}
				cancel()
			}
			return
		case <-t.C:
			refresh()
		}
	}
}

// Processes lists the live stage processes, by key order (stage, host, pid).
// A deployment where no process ever announced itself has none.
func Processes(ctx context.Context, js jetstream.JetStream) ([]Process, error) {
	kv, err := js.KeyValue(ctx, BucketProcesses)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, err
	}
	var out []Process
	for key := range lister.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue // expired or deleted meanwhile
		}
		var p Process
		if json.Unmarshal(e.Value(), &p) == nil {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Process) int { return strings.Compare(a.key(), b.key()) })
	return out, nil
}
