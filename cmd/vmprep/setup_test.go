package main

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/natsembed"
)

// vmprep setup refuses bad input before connecting, naming the flag and
// why; an unreachable server is an error at once, without the URL's secret.
// (internal/e2e's TestDeployPermissions runs setup against a cluster.)
func TestSetupRefusals(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"--replicas", "0"}, 2, "--replicas 0: want 1 to 5"},
		{[]string{"--store", "s3:x"}, 2, `--store "s3:x"`},
		{[]string{"--ack-wait", "0s"}, 2, "--ack-wait 0s"},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--work-max-bytes", "0"}, 2, `size "0": want a positive number`},
		{[]string{"--object-max-bytes", "lots"}, 2, `size "lots"`},
		{[]string{"--max-queued-per-namespace", "-1"}, 2, "max queued per namespace -1"},
		{[]string{"--max-msg-size", "1KiB"}, 2, "max message size 1024: want at least 64 KiB"},
		{[]string{"--user", "admin"}, 1, "--user needs --password-file"},
		{[]string{"--nats", "nats://admin:hunter2@127.0.0.1:1"}, 1, "connect to NATS at nats://REDACTED@127.0.0.1:1"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(append([]string{"setup"}, tc.args...), &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.says) || strings.Contains(stderr.String(), "hunter2") {
				t.Errorf("exit %d, stderr %q; want exit %d saying %q", code, stderr.String(), tc.code, tc.says)
			}
		})
	}
}

// vmprep setup gives every stream and bucket size limits and shows them; a
// second run with other flags updates them.
func TestSetupSetsLimits(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	if code := run([]string{"setup", "--nats", srv.ClientURL(), "--store", "nats:objs"}, &stdout, &stderr); code != 0 {
		t.Fatalf("setup: exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"LIMITS", "refuse new",
		"VMPREP_RESULTS", "VMPREP_DEAD", "KV_VMPREP_REQUESTS", "KV_VMPREP_LEASES", "KV_VMPREP_VERIFIED", "KV_VMPREP_PROCESSES", "KV_VMPREP_FLEET", "OBJ_objs",
		"requests per namespace waiting or in progress in a resolver: 100",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("setup's output lacks %q:\n%s", want, out)
		}
	}
	if !hasRow(out, "VMPREP_WORK", "100000", "1GiB", "1MiB", "refuse", "updated") || !hasRow(out, "OBJ_objs", "20GiB") {
		t.Errorf("setup's output lacks the work stream's or the object bucket's limits:\n%s", out)
	}
	stdout.Reset()
	if code := run([]string{"setup", "--nats", srv.ClientURL(), "--store", "nats:objs", "--work-max-msgs", "500",
		"--object-max-bytes", "2GiB", "--bucket-max-bytes", "16MiB", "--max-queued-per-namespace", "9"}, &stdout, &stderr); code != 0 {
		t.Fatalf("setup again: exit %d: %s", code, stderr.String())
	}
	if out := stdout.String(); !strings.Contains(out, "updated") || !strings.Contains(out, "resolver: 9") {
		t.Errorf("second run's output does not show the change:\n%s", out)
	}
	ctx := context.Background()
	for name, want := range map[string]int64{"VMPREP_WORK": 1 << 30, "OBJ_objs": 2 << 30, "KV_VMPREP_PROCESSES": 16 << 20, "KV_VMPREP_LEASES": 16 << 20, "KV_VMPREP_FLEET": 16 << 20} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.MaxBytes; got != want {
			t.Errorf("%s max bytes %d, want %d", name, got, want)
		}
	}
	s, _ := js.Stream(ctx, "VMPREP_WORK")
	if got := s.CachedInfo().Config.MaxMsgs; got != 500 {
		t.Errorf("work max msgs %d, want 500", got)
	}
}

// hasRow reports whether a line of out is a row of name holding every field.
func hasRow(out, name string, fields ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != name {
			continue
		}
		all := true
		for _, want := range fields {
			all = all && slices.Contains(f, want)
		}
		if all {
			return true
		}
	}
	return false
}
