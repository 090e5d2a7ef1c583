// Package fleetkv keeps the fleet model (internal/fleet) in the JetStream
// key-value bucket VMPREP_FLEET:
//
//	sel.<id>            a selection                 operator (vmprep fleet)
//	build.<id>          the build a selection is at resolver (sync)
//	plan.<host>         what a host must hold       resolver (coordinator)
//	host.<host>         a host announced itself     that host's converter
//	status.<host>.<id>  a host's state per selection that host's converter
//
// Every key has one writer, so NATS permissions on the $KV subjects say
// who may write what (deploy/nats/auth.conf), and every write carries its
// writer's role (Owner, stage.HeaderWriter): anyone can make the server
// publish an answer onto a key's subject, so a read takes the last entry
// its owner wrote (stage.GetOwned), stepping back through the key's
// history. Listing reads the last entry of every subject by batched
// direct get (multi_last): no reader creates a consumer, whose deliver
// subject the server would not check against the reader's rights.
package fleetkv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/stage"
)

// Bucket is the fleet's key-value bucket.
const Bucket = "VMPREP_FLEET"

// SubjectSync asks the resolver to look for new builds now (core NATS).
const SubjectSync = "vmprep.fleet.sync"

// Key prefixes (see the package comment).
const (
	prefixSelection = "sel."
	prefixBuild     = "build."
	prefixPlan      = "plan."
	prefixHost      = "host."
	prefixStatus    = "status."
)

// maxEntries bounds one listing: hosts × selections of a large fleet fit.
const maxEntries = 100_000

// ErrRelayed: see stage.ErrRelayed.
var ErrRelayed = stage.ErrRelayed

// ErrTampered: see stage.ErrTampered.
var ErrTampered = stage.ErrTampered

// History is how many entries per key the bucket keeps: a read steps back
// over entries the key's owner did not write (stage.GetOwned), so one
// overwrite does not erase a selection or a plan. vmprep setup raises it
// on an existing bucket (pipeline.ApplyLimits).
const History = stage.OwnedHistory

// ErrNoBucket means setup has not made the fleet bucket (nor may this user).
var ErrNoBucket = errors.New("no fleet bucket " + Bucket + " (run vmprep setup as the operator)")

// Config is the bucket vmprep setup creates.
func Config(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "vmprep fleet: selections (operator), their builds and host plans (resolver), host status (each host its own)",
		History:     History,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// Store reads and writes the fleet bucket.
type Store struct {
	kv jetstream.KeyValue
	nc *nats.Conn
}

// Open binds the bucket, creating it when missing and this user may (the
// operator's vmprep setup; an embedded deployment). A user that may not
// gets ErrNoBucket.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	var kv jetstream.KeyValue
	// A user without the right to look the bucket up hears so at once,
	// not after the API's timeout.
	denied, err := stage.Call(ctx, js.Conn(), "$JS.API.STREAM.INFO.KV_"+Bucket, func(ctx context.Context) (err error) {
		kv, err = js.KeyValue(ctx, Bucket)
		return err
	})
	if denied {
		return nil, fmt.Errorf("%w: this user may not read it: %w", ErrNoBucket, err)
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		err = stage.Create(ctx, js.Conn(), "key-value bucket "+Bucket, "$JS.API.STREAM.CREATE.KV_"+Bucket, func(ctx context.Context) (err error) {
			kv, err = js.CreateKeyValue(ctx, Config(replicas))
			return err
		})
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			kv, err = js.KeyValue(ctx, Bucket)
		}
		if errors.Is(err, stage.ErrCreateDenied) {
			return nil, fmt.Errorf("%w: %w", ErrNoBucket, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("fleet bucket %s: %w", Bucket, err)
	}
	return &Store{kv: kv, nc: js.Conn()}, nil
}

// SelectionKey, BuildKey, PlanKey, HostKey and StatusKey are the keys of
// the package comment.
func SelectionKey(id string) string        { return prefixSelection + id }
func BuildKey(id string) string            { return prefixBuild + id }
func PlanKey(host string) string           { return prefixPlan + host }
func HostKey(host string) string           { return prefixHost + host }
func StatusKey(host, id string) string     { return prefixStatus + host + "." + id }
func (s *Store) subject(key string) string { return "$KV." + Bucket + "." + key }

// Owner is the role that writes key (stage.HeaderWriter): "operator"
// (sel.), "resolver" (build., plan.), "host <host>" (host.<host>,
// status.<host>.<id>); "" for a key nobody owns.
func Owner(key string) string {
	switch {
	case strings.HasPrefix(key, prefixSelection):
		return "operator"
	case strings.HasPrefix(key, prefixBuild), strings.HasPrefix(key, prefixPlan):
		return "resolver"
	case strings.HasPrefix(key, prefixHost):
		return "host " + strings.TrimPrefix(key, prefixHost)
	case strings.HasPrefix(key, prefixStatus):
		if host, _, ok := strings.Cut(strings.TrimPrefix(key, prefixStatus), "."); ok {
			return "host " + host
		}
	}
	return ""
}

func (s *Store) put(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = stage.PutOwned(ctx, s.nc, Bucket, key, Owner(key), b, nil)
	return err
}

func (s *Store) delete(ctx context.Context, key string) error {
	return stage.DeleteOwned(ctx, s.nc, Bucket, key, Owner(key), nil)
}

// PutSelection stores sel (normalized) under its ID.
func (s *Store) PutSelection(ctx context.Context, sel fleet.Selection) error {
	return s.put(ctx, SelectionKey(sel.ID()), sel)
}

// DeleteSelection removes the selection with id, and its build record.
func (s *Store) DeleteSelection(ctx context.Context, id string) error {
	if err := s.delete(ctx, SelectionKey(id)); err != nil {
		return err
	}
	return s.delete(ctx, BuildKey(id))
}

// PutBuild records the build selection id is at.
func (s *Store) PutBuild(ctx context.Context, id string, b fleet.Build) error {
	return s.put(ctx, BuildKey(id), b)
}

// PutPlan stores host's plan.
func (s *Store) PutPlan(ctx context.Context, p fleet.Plan) error {
	return s.put(ctx, PlanKey(p.Host), p)
}

// Host is a converter host's announcement.
type Host struct {
	Started time.Time `json:"started"`
}

// Announce says host exists: the coordinator plans for it.
func (s *Store) Announce(ctx context.Context, host string, started time.Time) error {
	return s.put(ctx, HostKey(host), Host{Started: started})
}

// PutStatus records host's state for selection id.
func (s *Store) PutStatus(ctx context.Context, host, id string, st fleet.Status) error {
	return s.put(ctx, StatusKey(host, id), st)
}

// DeleteStatus removes host's state for selection id (no longer selected).
func (s *Store) DeleteStatus(ctx context.Context, host, id string) error {
	return s.delete(ctx, StatusKey(host, id))
}

// Plan reads the last plan the resolver wrote for host; a host without
// one has nothing to hold. A key overwritten past its history
// (ErrTampered), or an entry that is not a plan for host, is an error, not
// an empty plan: the host keeps what it holds.
func (s *Store) Plan(ctx context.Context, host string) (fleet.Plan, error) {
	key := PlanKey(host)
	data, _, err := stage.GetOwned(ctx, s.nc, Bucket, key, Owner(key))
	if errors.Is(err, stage.ErrKeyNotFound) {
		return fleet.Plan{Host: host}, nil
	}
	if err != nil {
		return fleet.Plan{}, err
	}
	var p fleet.Plan
	if err := json.Unmarshal(data, &p); err != nil {
		return fleet.Plan{}, fmt.Errorf("read %s/%s: %w", Bucket, key, err)
	}
	// The resolver's own entry; still, one that is not a plan for this
	// host must not read as an empty plan, which would free everything.
	if p.Host != host {
		return fleet.Plan{}, fmt.Errorf("read %s/%s: the entry is a plan for host %q, not %q", Bucket, key, p.Host, host)
	}
	return p, nil
}

// WatchPlan calls changed (on the subscription's goroutine) whenever
// host's plan is written; the caller reads it with Plan. A core
// subscription on the key's subject: no consumer.
func (s *Store) WatchPlan(host string, changed func()) (*nats.Subscription, error) {
	return s.nc.Subscribe(s.subject(PlanKey(host)), func(*nats.Msg) { changed() })
}

// WatchStatus calls changed whenever any host writes a status or announces
// itself, or a selection or build changes: what the coordinator plans from.
func (s *Store) WatchStatus(changed func()) ([]*nats.Subscription, error) {
	var subs []*nats.Subscription
	for _, p := range []string{prefixStatus, prefixHost, prefixSelection, prefixBuild} {
		sub, err := s.nc.Subscribe(s.subject(p+">"), func(*nats.Msg) { changed() })
		if err != nil {
			for _, s := range subs {
				_ = s.Unsubscribe()
			}
			return nil, err
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

// State is everything in the bucket.
type State struct {
	fleet.Fleet
	Announced map[string]Host
	// Tampered are the keys with no entry of their owner's left (List):
	// the state lacks what they held, so whoever plans from it must not
	// take their absence for a removal.
	Tampered []string
}

// Load reads every entry of the bucket (see List) into the fleet model.
// An entry that does not decode is skipped with its key in skipped: one
// bad entry must not stop the fleet. A tampered key is skipped too, and
// listed in st.Tampered.
func (s *Store) Load(ctx context.Context) (st State, skipped []string, err error) {
	entries, tampered, err := s.List(ctx, ">")
	if err != nil {
		return State{}, nil, err
	}
	for _, key := range tampered {
		skipped = append(skipped, fmt.Sprintf("%s: %v", key, ErrTampered))
	}
	st.Tampered = tampered
	st.Builds = map[string]fleet.Build{}
	st.Plans = map[string]fleet.Plan{}
	st.Status = map[string]map[string]fleet.Status{}
	st.Announced = map[string]Host{}
	for key, val := range entries {
		bad := func(err error) bool {
			if err != nil {
				skipped = append(skipped, fmt.Sprintf("%s: %v", key, err))
			}
			return err != nil
		}
		switch {
		case strings.HasPrefix(key, prefixSelection):
			var sel fleet.Selection
			if bad(json.Unmarshal(val, &sel)) {
				continue
			}
			n, err := sel.Normalize(true)
			if bad(err) {
				continue
			}
			if n.ID() != strings.TrimPrefix(key, prefixSelection) {
				bad(fmt.Errorf("selection %s stored under another id", n))
				continue
			}
			st.Selections = append(st.Selections, n)
		case strings.HasPrefix(key, prefixBuild):
			var b fleet.Build
			if !bad(json.Unmarshal(val, &b)) {
				st.Builds[strings.TrimPrefix(key, prefixBuild)] = b
			}
		case strings.HasPrefix(key, prefixPlan):
			var p fleet.Plan
			if !bad(json.Unmarshal(val, &p)) {
				st.Plans[strings.TrimPrefix(key, prefixPlan)] = p
			}
		case strings.HasPrefix(key, prefixHost):
			var h Host
			if !bad(json.Unmarshal(val, &h)) {
				st.Announced[strings.TrimPrefix(key, prefixHost)] = h
			}
		case strings.HasPrefix(key, prefixStatus):
			host, id, ok := strings.Cut(strings.TrimPrefix(key, prefixStatus), ".")
			var stat fleet.Status
			if !ok {
				bad(errors.New("not status.<host>.<selection>"))
				continue
			}
			if bad(json.Unmarshal(val, &stat)) {
				continue
			}
			if st.Status[host] == nil {
				st.Status[host] = map[string]fleet.Status{}
			}
			st.Status[host][id] = stat
		}
	}
	for h := range st.Announced {
		st.Hosts = append(st.Hosts, h)
	}
	return st, skipped, nil
}

// multiLast is the body of a batched direct get of the last message of
// every subject matching a filter (nats-server 2.11+).
type multiLast struct {
	MultiLast []string `json:"multi_last"`
	Batch     int      `json:"batch"`
}

// List returns the value its owner (Owner) last wrote of every key
// matching filter ("sel.>", ">"), deleted keys left out, and the keys with
// no owner's entry left in their history (ErrTampered), left out too. A
// key whose last entry is not its owner's is read back (stage.GetOwned).
func (s *Store) List(ctx context.Context, filter string) (entries map[string][]byte, tampered []string, err error) {
	last, stepBack, err := s.listLast(ctx, filter)
	if errors.Is(err, errHiddenHeaders) {
		// One entry hides its subject: read every key by its own subject
		// instead (a direct get of a key's subject cannot name another).
		last = map[string][]byte{}
		stepBack, err = s.keys(ctx, filter)
	}
	if err != nil {
		return nil, nil, err
	}
	for _, key := range stepBack {
		v, _, err := stage.GetOwned(ctx, s.nc, Bucket, key, Owner(key))
		switch {
		case err == nil:
			last[key] = v
		case errors.Is(err, stage.ErrKeyNotFound):
		case errors.Is(err, stage.ErrTampered):
			tampered = append(tampered, key)
		default:
			return nil, nil, fmt.Errorf("list %s: %w", Bucket, err)
		}
	}
	slices.Sort(tampered)
	return last, tampered, nil
}

// errHiddenHeaders: a listed entry's header block hides the server's
// headers (made by hand, stage.HeaderWhole), its subject among them.
var errHiddenHeaders = errors.New("an entry's header block hides the server's headers (made by hand)")

// keys lists the keys matching filter from the stream's subjects
// (STREAM.INFO, which every user of the bucket may call to bind it).
func (s *Store) keys(ctx context.Context, filter string) ([]string, error) {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Bucket, err)
	}
	str, err := js.Stream(ctx, "KV_"+Bucket)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Bucket, err)
	}
	info, err := str.Info(ctx, jetstream.WithSubjectFilter(s.subject(filter)))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Bucket, err)
	}
	if len(info.State.Subjects) > maxEntries {
		return nil, fmt.Errorf("list %s: more than %d entries", Bucket, maxEntries)
	}
	prefix := s.subject("")
	keys := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		if key, ok := strings.CutPrefix(subj, prefix); ok {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return keys, nil
}

// listLast reads the last entry of every key matching filter by one
// batched direct get: the owners' values (deleted keys left out), and the
// keys whose last entry is not their owner's.
func (s *Store) listLast(ctx context.Context, filter string) (entries map[string][]byte, notOwned []string, err error) {
	body, err := json.Marshal(multiLast{MultiLast: []string{s.subject(filter)}, Batch: maxEntries})
	if err != nil {
		return nil, nil, err
	}
	inbox := s.nc.NewInbox()
	msgs := make(chan *nats.Msg, 256)
	sub, err := s.nc.ChanSubscribe(inbox, msgs)
	if err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", Bucket, err)
	}
	defer sub.Unsubscribe() //nolint:errcheck // the inbox is ours alone
	if err := s.nc.PublishRequest("$JS.API.DIRECT.GET.KV_"+Bucket, inbox, body); err != nil {
		return nil, nil, fmt.Errorf("list %s: %w", Bucket, err)
	}
	out := map[string][]byte{}
	prefix := "$KV." + Bucket + "."
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("list %s: %w", Bucket, ctx.Err())
		case <-timer.C:
			return nil, nil, fmt.Errorf("list %s: no answer from the server (nats-server 2.11+ with direct gets allowed on the bucket)", Bucket)
		case m := <-msgs:
			timer.Reset(5 * time.Second)
			switch status := m.Header.Get("Status"); status {
			case "":
			case "404":
				return out, notOwned, nil
			case "204":
				if p := m.Header.Get("Nats-Num-Pending"); p != "" && p != "0" {
					return nil, nil, fmt.Errorf("list %s: more than %d entries", Bucket, maxEntries)
				}
				return out, notOwned, nil
			default:
				return nil, nil, fmt.Errorf("list %s: server answered %s %s", Bucket, status, m.Header.Get("Description"))
			}
			if !stage.HeaderWhole(m) {
				// A header block made by hand hides the server's own
				// headers, the entry's true subject among them: which key
				// it is cannot be told, and leaving it out could drop an
				// owner's key (a selection) from the fleet.
				return nil, nil, fmt.Errorf("list %s: %w", Bucket, errHiddenHeaders)
			}
			// A relayed entry has two subjects: its own, stored, and the
			// key's, which the direct get adds last.
			subjects := m.Header.Values("Nats-Subject")
			if len(subjects) == 0 {
				continue
			}
			key, ok := strings.CutPrefix(subjects[len(subjects)-1], prefix)
			if !ok {
				continue
			}
			if !stage.Owned(m, Bucket, subjects[len(subjects)-1], Owner(key)) {
				delete(out, key)
				notOwned = append(notOwned, key)
				continue
			}
			switch m.Header.Get("KV-Operation") {
			case "DEL", "PURGE":
				delete(out, key)
				continue
			}
			out[key] = m.Data
		}
	}
}
