package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// serveRun is runServe in a goroutine.
type serveRun struct {
	*testutil.Background
	stdout, stderr *testutil.LockedBuffer
}

func startServe(t *testing.T, args ...string) *serveRun {
	t.Helper()
	r := &serveRun{stdout: &testutil.LockedBuffer{}, stderr: &testutil.LockedBuffer{}}
	args = append([]string{"--cache-dir", t.TempDir(), "--jetstream-dir", t.TempDir(), "--log-format", "json", "--drain-timeout", "1s"}, args...)
	r.Background = testutil.StartBackground(t, "vmprep serve", r.stderr, func(ctx context.Context) int {
		return runServe(ctx, args, r.stdout, r.stderr)
	})
	return r
}

// url waits for the first stdout line ("nats: URL"); it fails if serve exits first.
func (r *serveRun) url(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if line, _, ok := strings.Cut(r.stdout.String(), "\n"); ok {
			return strings.TrimPrefix(line, "nats: ")
		}
		if c, exited := r.Exited(); exited {
			t.Fatalf("vmprep serve exited %d: %s", c, r.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("vmprep serve printed no URL")
	return ""
}

// exit waits for serve to end by itself.
func (r *serveRun) exit(t *testing.T) int {
	t.Helper()
	c, exited := r.Wait(30 * time.Second)
	if !exited {
		t.Fatal("vmprep serve is still running")
	}
	return c
}

// logAttr waits for a JSON log record with message msg and returns attribute key.
func logAttr(t *testing.T, log *testutil.LockedBuffer, msg, key string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(log.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				v, _ := rec[key].(string)
				return v
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log record %q:\n%s", msg, log.String())
	return ""
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServeRefusesUnauthenticatedListener: serve will not open any port
// beyond this host — client, websocket, MQTT, leafnode, cluster, gateway,
// monitoring — unless whoever reaches it must authenticate, or --insecure is
// given; loopback needs neither. Only the client port was checked before: a
// websocket on 0.0.0.0 let an anonymous client queue a request.
func TestServeRefusesUnauthenticatedListener(t *testing.T) {
	const users = "authorization { users: [ {user: a, password: b} ] }\n"
	// Each listener kind on every interface (-1: a free port), with and
	// without what authenticates it; the client port stays on loopback.
	loopback := "listen: 127.0.0.1:-1\n"
	kinds := []struct {
		kind, open, closed string
	}{
		{"client", "listen: 0.0.0.0:-1\n", "listen: 0.0.0.0:-1\n" + users},
		{"client", "port: -1\n", "port: -1\n" + users}, // no host: every interface
		{"websocket", loopback + users + "websocket { listen: 0.0.0.0:-1, no_tls: true, no_auth_user: a }\n",
			loopback + users + "websocket { listen: 0.0.0.0:-1, no_tls: true }\n"},
		{"websocket", loopback + "websocket { listen: 0.0.0.0:-1, no_tls: true }\n",
			loopback + "websocket { listen: 0.0.0.0:-1, no_tls: true, authorization { token: s3cret } }\n"},
		{"mqtt", loopback + "server_name: m\nmqtt { listen: 0.0.0.0:-1 }\n",
			loopback + "server_name: m\nmqtt { listen: 0.0.0.0:-1, authorization { user: u, password: p } }\n"},
		{"leafnode", loopback + "leafnodes { listen: 0.0.0.0:-1 }\n",
			loopback + "leafnodes { listen: 0.0.0.0:-1, authorization { user: leaf, password: p } }\n"},
		{"cluster", loopback + users + "cluster { name: c, listen: 0.0.0.0:-1 }\n",
			loopback + users + "cluster { name: c, listen: 0.0.0.0:-1, authorization { user: route, password: p } }\n"},
		{"gateway", loopback + users + "server_name: g\ngateway { name: g, listen: 0.0.0.0:-1 }\n",
			loopback + users + "server_name: g\ngateway { name: g, listen: 0.0.0.0:-1, authorization { user: gw, password: p } }\n"},
		{"monitoring", loopback + users + "http: 0.0.0.0:-1\n", loopback + users + "http: 127.0.0.1:-1\n"},
		{"monitoring", "listen: 0.0.0.0:-1\n" + users + "http_port: -1\n", "listen: 0.0.0.0:-1\n" + users},
	}
	type tc struct {
		name   string
		args   []string
		serves bool
		kind   string
	}
	tests := []tc{
		{"all interfaces", []string{"--listen", "0.0.0.0:0"}, false, "client"},
		{"config with no_auth_user", []string{"--config", writeFile(t, "noauth.conf", "listen: 0.0.0.0:-1\n"+users+"no_auth_user: a\n")}, false, "client"},
		{"loopback", []string{"--listen", "127.0.0.1:0"}, true, ""},
		{"all interfaces, --insecure", []string{"--listen", "0.0.0.0:0", "--insecure"}, true, ""},
		{"websocket open, --insecure", []string{"--insecure", "--config", writeFile(t, "ws.conf", kinds[3].open)}, true, ""},
	}
	peer := map[string]string{"cluster": "cluster", "gateway": "gateway"}
	for i, k := range kinds {
		tests = append(tests,
			tc{fmt.Sprintf("%s %d without authentication", k.kind, i), []string{"--config", writeFile(t, fmt.Sprintf("open%d.conf", i), k.open)}, false, k.kind},
			tc{fmt.Sprintf("%s %d with authentication", k.kind, i), []string{"--config", writeFile(t, fmt.Sprintf("closed%d.conf", i), k.closed)}, true, peer[k.kind]})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startServe(t, append([]string{"--stages", "none"}, tt.args...)...)
			if tt.serves {
				// Past the guard. A lone node of a cluster (or gateway)
				// with JetStream may never become ready for want of peers:
				// anything but the guard's refusal will do there.
				if tt.kind == "" {
					r.url(t)
				} else if code, exited := r.Wait(30 * time.Second); exited && (code == 2 || strings.Contains(r.stderr.String(), "refusing")) {
					t.Errorf("refused (exit %d): %s", code, r.stderr.String())
				}
				return
			}
			if code := r.exit(t); code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			want := "refusing to open the " + tt.kind + " listener on "
			if msg := r.stderr.String(); !strings.Contains(msg, want) || !strings.Contains(msg, "without authentication") || !strings.Contains(msg, "--insecure") {
				t.Errorf("stderr does not say %q, why or how to proceed: %s", want, msg)
			}
		})
	}
}

// TestServeConfigFile runs serve on deploy/nats-server.conf (the users of
// deploy/nats/auth.conf, passwords from the environment): its own stages
// authenticate as admin with --user/--password-file, a client prepares as
// alice (in her namespace, by default), and the metrics endpoint shows what
// the stages did.
func TestServeConfigFile(t *testing.T) {
	for _, user := range []string{"ADMIN", "RESOLVER", "FETCHER", "VERIFIER", "CONVERTER", "ALICE", "BOB"} {
		t.Setenv("VMPREP_"+user+"_PASSWORD", strings.ToLower(user)+"-"+t.Name())
	}
	// The file requires TLS of clients: its certificate files, and the CA
	// for the client (NATS_CA, the default of --tls-ca).
	ca := testutil.NewCA(t)
	cert, key := ca.Issue("nats")
	for k, v := range map[string]string{"VMPREP_TLS_CERT": cert, "VMPREP_TLS_KEY": key, "VMPREP_TLS_CA": ca.CertFile, "NATS_CA": ca.CertFile} {
		t.Setenv(k, v)
	}
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	r := startServe(t, "--config", filepath.Join("..", "..", "deploy", "nats-server.conf"), "--listen", "127.0.0.1:0",
		"--user", "admin", "--password-file", writeFile(t, "admin-pw", "admin-"+t.Name()+"\n"),
		"--mirror", m.URL, "--keyring", m.KeyringFile(), "--metrics-listen", "127.0.0.1:0")
	url := r.url(t)
	base := "http://" + logAttr(t, r.stderr, "metrics listening", "addr")

	var stdout, stderr strings.Builder
	args := []string{"prepare", "--nats", url, "--user", "alice", "--password-file", writeFile(t, "alice-pw", "alice-"+t.Name()),
		"--json", "--arch", "amd64", "--format", "qcow2", "ubuntu", "24.04"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("prepare as alice: exit %d: %s", code, stderr.String())
	}

	// A wrong password is refused at once, and said so, without the password.
	stdout.Reset()
	stderr.Reset()
	scheme, hostPort, _ := strings.Cut(url, "://")
	wrong := scheme + "://alice:not-" + t.Name() + "@" + hostPort
	if code := run([]string{"prepare", "--nats", wrong, "ubuntu", "24.04"}, &stdout, &stderr); code != 1 {
		t.Errorf("prepare with a wrong password: exit %d, want 1", code)
	}
	if msg := stderr.String(); !strings.Contains(msg, "authorization violation") || strings.Contains(msg, "not-"+t.Name()) {
		t.Errorf("prepare with a wrong password said: %s", msg)
	}

	if code, body := testutil.Get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d %q", code, body)
	}
	got := testutil.Scrape(t, base+"/metrics")
	for _, s := range []string{"resolver", "fetcher", "verifier", "collector"} {
		if v, _ := got.Value("vmprep_messages_handled_total", "stage", s, "outcome", "ok"); v < 1 {
			t.Errorf("vmprep_messages_handled_total{stage=%s,outcome=ok} = %v, want ≥ 1", s, v)
		}
	}
	var want int64
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
		want += m.BytesServed(m.Path("ubuntu", "24.04", image.ArchAMD64, role))
	}
	if v, _ := got.Value("vmprep_origin_bytes_total"); int64(v) != want {
		t.Errorf("vmprep_origin_bytes_total = %v, want %d (what the mirror served)", v, want)
	}
	if strings.Contains(r.stderr.String(), "admin-"+t.Name()) {
		t.Error("the admin password reached serve's log")
	}
}

// TestTLS: a server that verifies client certificates (a throwaway CA made
// here), a stage process and a client working over TLS with theirs, and a
// client without one refused at once.
func TestTLS(t *testing.T) {
	ca := testutil.NewCA(t)
	serverCert, serverKey := ca.Issue("nats-server")
	stageCert, stageKey := ca.Issue("stage")
	clientCert, clientKey := ca.Issue("client")
	conf := writeFile(t, "tls.conf", fmt.Sprintf(`listen: 127.0.0.1:-1
tls {
  cert_file: %q
  key_file: %q
  ca_file: %q
  verify: true
}
`, serverCert, serverKey, ca.CertFile))
	r := startServe(t, "--config", conf, "--stages", "none")
	url := r.url(t)
	if !strings.HasPrefix(url, "tls://") {
		t.Errorf("serve's URL %q does not say tls://", url)
	}

	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	ctx, cancel := context.WithCancel(context.Background())
	stageLog := &testutil.LockedBuffer{}
	stageDone := make(chan int, 1)
	go func() {
		stageDone <- cli.RunStage(ctx, "stages", []string{"--nats", url, "--cache-dir", t.TempDir(),
			"--tls-ca", ca.CertFile, "--tls-cert", stageCert, "--tls-key", stageKey,
			"--mirror", m.URL, "--keyring", m.KeyringFile(), "--log-format", "json", "--drain-timeout", "1s"},
			stageLog, pipeline.AllStages...)
	}()
	defer func() {
		cancel()
		if code := <-stageDone; code != 0 {
			t.Errorf("stage process exit %d:\n%s", code, stageLog.String())
		}
	}()

	var stdout, stderr strings.Builder
	args := []string{"prepare", "--nats", url, "--tls-ca", ca.CertFile, "--tls-cert", clientCert, "--tls-key", clientKey,
		"--json", "--timeout", "2m", "--arch", "amd64", "--format", "qcow2", "ubuntu", "24.04"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("prepare over TLS: exit %d: %s\nstage log:\n%s", code, stderr.String(), stageLog.String())
	}
	var res messages.Result
	if err := json.Unmarshal([]byte(stdout.String()), &res); err != nil || res.Status != messages.ResultPrepared {
		t.Fatalf("prepare over TLS: %v %s", err, stdout.String())
	}

	// Without a client certificate: refused, at once, saying TLS.
	tests := []struct {
		name string
		args []string
	}{
		{"no client certificate", []string{"--tls-ca", ca.CertFile}},
		{"certificate from another CA", func() []string {
			other := testutil.NewCA(t)
			c, k := other.Issue("intruder")
			return []string{"--tls-ca", ca.CertFile, "--tls-cert", c, "--tls-key", k}
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			args := append(append([]string{"prepare", "--nats", url}, tt.args...), "--timeout", "1m", "ubuntu", "24.04")
			if code := run(args, &stdout, &stderr); code != 1 {
				t.Fatalf("exit %d, want 1: %s", code, stderr.String())
			}
			if msg := stderr.String(); !strings.Contains(msg, "TLS") {
				t.Errorf("the refusal does not say TLS: %s", msg)
			}
		})
	}
}

// TestPrepareNeverShowsThePassword: a URL's credentials stay out of the
// error when the server cannot be reached.
func TestPrepareNeverShowsThePassword(t *testing.T) {
	var stdout, stderr strings.Builder
	if code := run([]string{"prepare", "--nats", "nats://stage:hunter2-secret@127.0.0.1:1", "ubuntu", "24.04"}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr.String())
	}
	if msg := stderr.String(); strings.Contains(msg, "hunter2") || !strings.Contains(msg, "nats://REDACTED@127.0.0.1:1") {
		t.Errorf("prepare said: %s", msg)
	}
}

// The operator commands as a user the permissions do not allow them: the
// server drops the API call unanswered, and the error says it refused it
// and who may, not only that a deadline passed.
func TestOperatorCommandsNameTheRefusal(t *testing.T) {
	for _, user := range []string{"ADMIN", "RESOLVER", "FETCHER", "VERIFIER", "CONVERTER", "ALICE", "BOB"} {
		t.Setenv("VMPREP_"+user+"_PASSWORD", strings.ToLower(user)+"-"+t.Name())
	}
	// The file requires TLS of clients: its certificate files, and the CA
	// for the client (NATS_CA, the default of --tls-ca).
	ca := testutil.NewCA(t)
	cert, key := ca.Issue("nats")
	for k, v := range map[string]string{"VMPREP_TLS_CERT": cert, "VMPREP_TLS_KEY": key, "VMPREP_TLS_CA": ca.CertFile, "NATS_CA": ca.CertFile} {
		t.Setenv(k, v)
	}
	r := startServe(t, "--config", filepath.Join("..", "..", "deploy", "nats-server.conf"), "--listen", "127.0.0.1:0", "--stages", "none")
	url := r.url(t)
	var stdout, stderr strings.Builder
	admin := []string{"--nats", url, "--user", "admin", "--password-file", writeFile(t, "admin-pw", "admin-"+t.Name())}
	if code := run(append([]string{"setup"}, admin...), &stdout, &stderr); code != 0 {
		t.Fatalf("setup as admin: exit %d: %s", code, stderr.String())
	}
	alice := []string{"--nats", url, "--user", "alice", "--password-file", writeFile(t, "alice-pw", "alice-"+t.Name())}
	bob := []string{"--nats", url, "--user", "bob", "--password-file", writeFile(t, "bob-pw", "bob-"+t.Name())}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{append([]string{"status"}, alice...), []string{"permissions violation", "alice may not", "admin"}},
		{append([]string{"dead", "ls"}, alice...), []string{"permissions violation", "alice may not", "admin"}},
		// bob in alice's namespace: refused, and told why.
		{append(append([]string{"prepare"}, bob...), "--namespace", "alice", "ubuntu", "24.04"),
			[]string{"permissions violation", `namespace "alice" is not user "bob"'s`}},
	} {
		t.Run(strings.Join(tc.args[:1], " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			if code := run(tc.args, &stdout, &stderr); code != 1 {
				t.Errorf("exit %d, want 1; stderr: %s", code, stderr.String())
			}
			msg := strings.ToLower(stderr.String())
			// Said when the refusal arrives, not after the call's timeout.
			if strings.Contains(msg, "deadline exceeded") || strings.Contains(msg, "timeout") {
				t.Errorf("the refusal was reported as a timeout: %s", stderr.String())
			}
			for _, want := range tc.want {
				if !strings.Contains(msg, want) {
					t.Errorf("stderr does not say %q: %s", want, stderr.String())
				}
			}
		})
	}
}
