package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/stage"
)

// The fleet bucket under deploy/nats/auth.conf's users (with two converter
// hosts from `vmprep users converters`): the operator writes selections;
// the resolver reads everything and writes builds and plans; a host reads
// its own plan and writes its own status, and the server refuses every
// other write.
func TestFleetPermissions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connect := fleetUsers(t)
	as := func(user string) (*nats.Conn, *fleetkv.Store) {
		t.Helper()
		nc := connect(user)
		js, _ := jetstream.New(nc)
		st, err := fleetkv.Open(ctx, js, 1)
		if err != nil {
			t.Fatalf("%s opens the fleet bucket: %v", user, err)
		}
		return nc, st
	}
	// write runs a write as the user and reports whether the server refused it.
	write := func(nc *nats.Conn, what string, do func(context.Context) error) (refused bool) {
		t.Helper()
		denied, err := stage.Call(ctx, nc, "", do)
		if err != nil && !denied {
			t.Fatalf("%s: %v", what, err)
		}
		return denied
	}
	sel, _ := fleet.Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "host-*"}.Normalize(false)
	adminNC, admin := as("admin")
	if write(adminNC, "admin writes a selection", func(ctx context.Context) error { return admin.PutSelection(ctx, sel) }) {
		t.Fatal("admin may not write a selection")
	}
	resolverNC, resolver := as("resolver")
	host1NC, host1 := as("converter_host-1")
	id := sel.ID()
	for _, tc := range []struct {
		what   string
		nc     *nats.Conn
		do     func(context.Context) error
		refuse bool
	}{
		{"the resolver records a build", resolverNC, func(ctx context.Context) error { return resolver.PutBuild(ctx, id, fleet.Build{Serial: "s1"}) }, false},
		{"the resolver writes a plan", resolverNC, func(ctx context.Context) error { return resolver.PutPlan(ctx, fleet.Plan{Host: "host-1"}) }, false},
		{"the resolver writes a selection", resolverNC, func(ctx context.Context) error { return resolver.PutSelection(ctx, sel) }, true},
		{"the resolver writes a host's status", resolverNC, func(ctx context.Context) error { return resolver.PutStatus(ctx, "host-1", id, fleet.Status{}) }, true},
		{"host-1 announces itself", host1NC, func(ctx context.Context) error { return host1.Announce(ctx, "host-1", time.Now()) }, false},
		{"host-1 writes its status", host1NC, func(ctx context.Context) error {
			return host1.PutStatus(ctx, "host-1", id, fleet.Status{State: fleet.StateReady})
		}, false},
		{"host-1 removes its status", host1NC, func(ctx context.Context) error { return host1.DeleteStatus(ctx, "host-1", id) }, false},
		{"host-1 reads its plan", host1NC, func(ctx context.Context) error { _, err := host1.Plan(ctx, "host-1"); return err }, false},
		{"host-1 reads the bucket", host1NC, func(ctx context.Context) error { _, _, err := host1.Load(ctx); return err }, false},
		{"host-1 writes host-2's status", host1NC, func(ctx context.Context) error {
			return host1.PutStatus(ctx, "host-2", id, fleet.Status{State: fleet.StateReady})
		}, true},
		{"host-1 announces host-2", host1NC, func(ctx context.Context) error { return host1.Announce(ctx, "host-2", time.Now()) }, true},
		{"host-1 writes a selection", host1NC, func(ctx context.Context) error { return host1.PutSelection(ctx, sel) }, true},
		{"host-1 writes its plan", host1NC, func(ctx context.Context) error { return host1.PutPlan(ctx, fleet.Plan{Host: "host-1"}) }, true},
		{"host-1 records a build", host1NC, func(ctx context.Context) error { return host1.PutBuild(ctx, id, fleet.Build{Serial: "s0"}) }, true},
		{"host-1 reads host-2's plan", host1NC, func(ctx context.Context) error { _, err := host1.Plan(ctx, "host-2"); return err }, true},
	} {
		if got := write(tc.nc, tc.what, tc.do); got != tc.refuse {
			t.Errorf("%s: refused %v, want %v", tc.what, got, tc.refuse)
		}
	}
	// Subscriptions and plain publishes: a refusal comes back before the
	// flush's answer.
	refused := func(nc *nats.Conn, do func() error) bool {
		t.Helper()
		before := nc.LastError()
		if err := do(); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		after := nc.LastError()
		return after != nil && after != before && errors.Is(after, nats.ErrPermissionViolation)
	}
	sub := func(nc *nats.Conn, subject string) func() error {
		return func() error { _, err := nc.Subscribe(subject, func(*nats.Msg) {}); return err }
	}
	for _, tc := range []struct {
		what   string
		nc     *nats.Conn
		do     func() error
		refuse bool
	}{
		{"the resolver hears fleet sync", resolverNC, sub(resolverNC, fleetkv.SubjectSync), false},
		{"the resolver watches the fleet", resolverNC, func() error { _, err := resolver.WatchStatus(func() {}); return err }, false},
		{"host-1 watches its plan", host1NC, func() error { _, err := host1.WatchPlan("host-1", func() {}); return err }, false},
		{"host-1 watches host-2's plan", host1NC, func() error { _, err := host1.WatchPlan("host-2", func() {}); return err }, true},
		{"host-1 asks in its namespace", host1NC, func() error { return host1NC.Publish("vmprep.prepare.converter_host-1", []byte("{}")) }, false},
		{"host-1 hears its results", host1NC, sub(host1NC, "vmprep.result.converter_host-1.*"), false},
		{"host-1 asks in host-2's namespace", host1NC, func() error { return host1NC.Publish("vmprep.prepare.converter_host-2", []byte("{}")) }, true},
		{"host-1 hears another's results", host1NC, sub(host1NC, "vmprep.result.converter_host-2.*"), true},
		{"host-1 watches others' status", host1NC, sub(host1NC, "$KV.VMPREP_FLEET.status.>"), true},
	} {
		if got := refused(tc.nc, tc.do); got != tc.refuse {
			t.Errorf("%s: refused %v, want %v", tc.what, got, tc.refuse)
		}
	}

	st, _, err := admin.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Selections) != 1 || st.Builds[id].Serial != "s1" || len(st.Hosts) != 1 || st.Hosts[0] != "host-1" {
		t.Errorf("refused writes changed the fleet: %+v", st)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Error("a refusal was only seen as a timeout")
	}
}

// fleetUsersDir holds the password files of the last fleetUsers (the
// tests of this package do not run in parallel).
var fleetUsersDir string

// fleetUsers starts a nats-server with deploy/nats/auth.conf's users and
// two converter hosts' (host-1, host-2, from `vmprep users converters`),
// runs setup as admin, and returns a way to connect as a user.
func fleetUsers(t *testing.T) func(user string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	const pw = "s3cret-for-tests"
	for _, u := range []string{"ADMIN", "ALICE", "BOB", "CONVERTER", "FETCHER", "RESOLVER", "VERIFIER"} {
		t.Setenv("VMPREP_"+u+"_PASSWORD", pw)
	}
	out := t.TempDir()
	fleetUsersDir = out
	var stdout, stderr strings.Builder
	if code := run([]string{"users", "converters", "--hosts", "host-1,host-2", "--auth", "../../deploy/nats/auth.conf", "--out", out, "--cost", "4"}, &stdout, &stderr); code != 0 {
		t.Fatalf("users converters: %s", stderr.String())
	}
	cfg, err := natsembed.LoadConfig(filepath.Join(out, "auth.conf"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0", Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	adminPW := filepath.Join(out, "admin.password")
	if err := os.WriteFile(adminPW, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"setup", "--nats", srv.ClientURL(), "--user", "admin", "--password-file", adminPW, "--store", "nats:vmprep"}, &stdout, &stderr); code != 0 {
		t.Fatalf("setup as admin: %s", stderr.String())
	}
	return func(user string, opts ...nats.Option) *nats.Conn {
		t.Helper()
		password := pw
		if strings.HasPrefix(user, "converter_") {
			b, err := os.ReadFile(filepath.Join(out, user+".password"))
			if err != nil {
				t.Fatal(err)
			}
			password = strings.TrimSpace(string(b))
		}
		nc, err := nats.Connect(srv.ClientURL(), append([]nats.Option{nats.UserInfo(user, password), nats.CustomInboxPrefix("_INBOX_" + user)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
}
