package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/messages"
)

const secret = "s3cret-Pa55word"

// authServer starts a real nats-server with JetStream on 127.0.0.1:port
// (0: a free one) whose only user is stage with password pw.
func authServer(t *testing.T, port int, pw string) *server.Server {
	t.Helper()
	if port == 0 {
		port = server.RANDOM_PORT
	}
	o := &server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		Users: []*server.User{{Username: "stage", Password: pw}},
	}
	srv, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

func hostPort(srv *server.Server) string {
	return strings.TrimPrefix(srv.ClientURL(), "nats://")
}

// stageRun is RunStage in a goroutine, with its JSON log.
type stageRun struct {
	*testutil.Background
	log *testutil.LockedBuffer
}

func startVerifier(t *testing.T, args ...string) *stageRun {
	t.Helper()
	r := &stageRun{log: &testutil.LockedBuffer{}}
	args = append([]string{"--cache-dir", t.TempDir(), "--log-format", "json", "--log-level", "debug", "--drain-timeout", "1s"}, args...)
	r.Background = testutil.StartBackground(t, "verifier", r.log, func(ctx context.Context) int {
		return cli.RunStage(ctx, "verifier", args, r.log, messages.StageVerifier)
	})
	return r
}

// exit waits for the stage to end by itself and returns its status.
func (r *stageRun) exit(t *testing.T) int {
	t.Helper()
	c, exited := r.Wait(60 * time.Second)
	if !exited {
		t.Fatalf("stage still running; log:\n%s", r.log.String())
	}
	return c
}

// records parses the JSON log; every line must be a JSON object.
func (r *stageRun) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.log.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("--log-format json wrote a line that is not JSON: %q", line)
		}
		out = append(out, rec)
	}
	return out
}

// await waits for a log record with message msg.
func (r *stageRun) await(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, rec := range r.records(t) {
			if rec["msg"] == msg {
				return rec
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line %q", msg)
	return nil
}

func waitStatus(t *testing.T, url string, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := testutil.Get(t, url)
		if code == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d %q, want %d", url, code, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metricValue(t *testing.T, url, name string, labels ...string) float64 {
	t.Helper()
	v, _ := testutil.Scrape(t, url).Value(name, labels...)
	return v
}

// TestStageProcess runs a stage as its main would, against a server with a
// password: it works, never writes the password, logs JSON whose lines about
// a request carry request_id, and serves metrics and probes that follow the
// connection.
func TestStageProcess(t *testing.T) {
	srv := authServer(t, 0, secret)
	url := "nats://stage:" + secret + "@" + hostPort(srv)
	r := startVerifier(t, "--nats", url, "--metrics-listen", "127.0.0.1:0")
	base := "http://" + r.await(t, "metrics listening")["addr"].(string)
	r.await(t, "serving")
	waitStatus(t, base+"/readyz", http.StatusOK)
	waitStatus(t, base+"/healthz", http.StatusOK)

	// A message the verifier cannot read: a dead letter, counted.
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("stage", secret))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	poison := `{"v":1,"type":"asset","request_id":"r-poison"}`
	if err := nc.Publish(messages.SubjectVerify, []byte(poison)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for metricValue(t, base+"/metrics", "vmprep_dead_letters_total", "stage", "verifier") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter counted:\n%s", r.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := metricValue(t, base+"/metrics", "vmprep_messages_handled_total", "stage", "verifier", "outcome", "poison"); v != 1 {
		t.Errorf("handled{verifier,poison} = %v, want 1", v)
	}
	if v := metricValue(t, base+"/metrics", "vmprep_in_flight", "stage", "verifier"); v != 0 {
		t.Errorf("in flight = %v, want 0", v)
	}

	// The server goes away: the process is no longer healthy.
	srv.Shutdown()
	waitStatus(t, base+"/healthz", http.StatusServiceUnavailable)
	r.Stop()
	if code := r.exit(t); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}

	logs := r.log.String()
	if strings.Contains(logs, secret) {
		t.Errorf("the password reached the log:\n%s", logs)
	}
	if !strings.Contains(logs, "REDACTED@") {
		t.Errorf("the log does not name the (redacted) server:\n%s", logs)
	}
	aboutPoison := 0
	for _, rec := range r.records(t) {
		if _, ok := rec["request"]; ok {
			t.Errorf("log line uses \"request\" instead of \"request_id\": %v", rec)
		}
		if rec["request_id"] == "r-poison" {
			aboutPoison++
		}
	}
	if aboutPoison == 0 {
		t.Errorf("no log line about the poison message carries request_id:\n%s", logs)
	}
}

// TestStageWrongPassword: a refused password ends the process at once with
// "authorization violation", without the password.
func TestStageWrongPassword(t *testing.T) {
	srv := authServer(t, 0, secret)
	wrong := "wr0ng-" + secret
	r := startVerifier(t, "--nats", "nats://stage:"+wrong+"@"+hostPort(srv))
	if code := r.exit(t); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	logs := r.log.String()
	if !strings.Contains(logs, "authorization violation") {
		t.Errorf("the log does not say authorization violation:\n%s", logs)
	}
	if strings.Contains(logs, wrong) {
		t.Errorf("the password reached the log:\n%s", logs)
	}
}

// TestStageWaitsThenRefused: a stage started before its server waits (its
// probes say so), and when the server comes up and refuses the password from
// --password-file, the process ends with "authorization violation" instead
// of waiting forever.
func TestStageWaitsThenRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte("not-the-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startVerifier(t, "--nats", fmt.Sprintf("nats://127.0.0.1:%d", port), "--user", "stage", "--password-file", pwFile,
		"--metrics-listen", "127.0.0.1:0")
	base := "http://" + r.await(t, "metrics listening")["addr"].(string)
	r.await(t, "waiting for NATS")
	for _, probe := range []string{"/healthz", "/readyz"} {
		if code, body := testutil.Get(t, base+probe); code != http.StatusServiceUnavailable {
			t.Errorf("%s while waiting for NATS: %d %q, want 503", probe, code, body)
		}
	}
	authServer(t, port, secret)
	if code := r.exit(t); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if logs := r.log.String(); !strings.Contains(logs, "authorization violation") {
		t.Errorf("the log does not say authorization violation:\n%s", logs)
	}
}

// TestStageConnectionFlags: mistakes in the credential and TLS flags are
// usage errors, named.
func TestStageConnectionFlags(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"user without password file", []string{"--user", "stage"}, "--password-file"},
		{"password file without user", []string{"--password-file", pw}, "--user"},
		{"missing password file", []string{"--user", "stage", "--password-file", filepath.Join(dir, "nope")}, "no such file"},
		{"creds and user", []string{"--creds", pw, "--user", "stage", "--password-file", pw}, "choose one"},
		{"missing creds", []string{"--creds", filepath.Join(dir, "nope.creds")}, "--creds"},
		{"cert without key", []string{"--tls-cert", pw}, "--tls-key"},
		{"missing CA", []string{"--tls-ca", filepath.Join(dir, "nope.pem")}, "--tls-ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startVerifier(t, append([]string{"--nats", "nats://127.0.0.1:1"}, tt.args...)...)
			if code := r.exit(t); code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.Contains(r.log.String(), tt.want) {
				t.Errorf("log does not mention %q:\n%s", tt.want, r.log.String())
			}
		})
	}
}

// TestHelpHidesTheURLPassword: --help shows --nats's default, which may come
// from NATS_URL.
func TestHelpHidesTheURLPassword(t *testing.T) {
	t.Setenv("NATS_URL", "nats://stage:"+secret+"@nats.example:4222")
	var out testutil.LockedBuffer
	if code := cli.RunStage(context.Background(), "verifier", []string{"--help"}, &out, messages.StageVerifier); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	if strings.Contains(out.String(), secret) || !strings.Contains(out.String(), "nats://REDACTED@nats.example:4222") {
		t.Errorf("--help shows:\n%s", out.String())
	}
}

// TestConverterCloneDir: a --clone-dir that is not a directory stops the
// converter before it connects (the URL here answers nothing).
func TestConverterCloneDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dir, want string }{
		{filepath.Join(t.TempDir(), "missing"), "no such file"},
		{file, "not a directory"},
	} {
		var out testutil.LockedBuffer
		code := cli.RunStage(context.Background(), "converter", []string{"--nats", "nats://127.0.0.1:1", "--cache-dir", t.TempDir(), "--clone-dir", tc.dir}, &out, messages.StageConverter)
		if code != 2 || !strings.Contains(out.String(), "--clone-dir") || !strings.Contains(out.String(), tc.want) {
			t.Errorf("--clone-dir %s: exit %d, want 2 saying %q:\n%s", tc.dir, code, tc.want, out.String())
		}
	}
}
