package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// deployUsers are the users of deploy/nats/auth.conf and the environment
// variables their passwords come from.
var deployUsers = map[string]string{
	"admin": "VMPREP_ADMIN_PASSWORD", "resolver": "VMPREP_RESOLVER_PASSWORD", "fetcher": "VMPREP_FETCHER_PASSWORD",
	"verifier": "VMPREP_VERIFIER_PASSWORD", "converter": "VMPREP_CONVERTER_PASSWORD",
	"alice": "VMPREP_ALICE_PASSWORD", "bob": "VMPREP_BOB_PASSWORD",
}

// deployPasswords gives every user of deploy/nats/auth.conf a password (in
// the environment, for nats-server) and a password file, and returns the
// passwords and the files by user. The certificates and the route secret
// the files also take from the environment are set by deployTLS.
func deployPasswords(t *testing.T) (passwords, files map[string]string) {
	t.Helper()
	passwords, files = map[string]string{}, map[string]string{}
	deployTLS(t)
	dir := t.TempDir()
	for user, env := range deployUsers {
		pw := user + "-pw-" + fmt.Sprint(time.Now().UnixNano())
		t.Setenv(env, pw)
		passwords[user] = pw
		files[user] = filepath.Join(dir, user+".password")
		if err := os.WriteFile(files[user], []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return passwords, files
}

// TestDeployPermissions runs a deployment on exactly deploy/nats's files as
// a three-node cluster: vmprep setup as admin, every stage as its own
// process with its own user, alice preparing (for herself, and for a target
// host). Then it shows each thing a user must not do refused by the server
// with a permissions violation.
func TestDeployPermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	passwords, pwFiles := deployPasswords(t)
	bin := cluster.Build(t)
	// mac1 is a converter host with its own user (vmprep users converters).
	confs := deployWithHosts(t, bin, passwords, pwFiles, "mac1")
	c, _ := cluster.NewNATSClusterFromConfigs(t, bin, confs)
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(64<<20, 16<<20))
	as := func(user string) []string {
		return []string{"--nats", c.NATS, "--user", user, "--password-file", pwFiles[user]}
	}
	vmprep := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(c.Bin, "vmprep"), args...).CombinedOutput()
		return string(out), err
	}

	// A stage cannot create what it needs: it says so and stops, rather
	// than waiting forever.
	early := c.Start("fetcher#early", append(as("fetcher"), "--store", "nats:"+cluster.Bucket, "--cache-dir", t.TempDir())...)
	if st, ok := early.Wait(time.Minute); !ok || st.Success() {
		t.Fatalf("a fetcher started before vmprep setup did not fail (exited: %v): %s", ok, early.Output())
	}
	if out := early.Output(); !strings.Contains(out, "stream VMPREP_WORK missing and this user may not create it: run `vmprep setup` as an admin user") {
		t.Errorf("a fetcher started before vmprep setup said:\n%s", out)
	}

	// The operator sets up, twice: the second run changes nothing.
	for range 2 {
		if out, err := vmprep(append([]string{"setup", "--store", "nats:" + cluster.Bucket, "--replicas", "3", "--hosts", "mac1"}, as("admin")...)...); err != nil {
			t.Fatalf("vmprep setup as admin: %v\n%s", err, out)
		} else {
			for _, want := range [][2]string{{"VMPREP_WORK", "3"}, {"OBJ_" + cluster.Bucket, "3"}, {"KV_VMPREP_LEASES", "3"}, {"VMPREP_WORK.fetcher", "30s"}} {
				if !hasRow(out, want[0], want[1]) {
					t.Errorf("vmprep setup printed no row %q:\n%s", want, out)
				}
			}
		}
	}

	stageArgs := func(user string) []string {
		return append(as(user), "--store", "nats:"+cluster.Bucket, "--replicas", "3", "--cache-dir", t.TempDir(), "--drain-timeout", "2s")
	}
	stages := []*cluster.Proc{
		c.Start("resolver", append(stageArgs("resolver"), "--mirror", m.URL, "--keyring", m.KeyringFile())...),
		c.Start("fetcher", append(stageArgs("fetcher"), "--metrics-listen", "127.0.0.1:0")...),
		c.Start("verifier", stageArgs("verifier")...),
	}
	converterCache := t.TempDir()
	stages = append(stages, c.Start("converter", append(as("converter_mac1"), "--store", "nats:"+cluster.Bucket, "--cache-dir", converterCache, "--target", "mac1")...))

	// A request that fails ends with a failed result, whichever stage fails
	// it: every stage's user may tell the collector (vmprep.asset.done).
	// Refused, the failure was retried forever and alice waited forever.
	failing := func(stageName string, args ...string) {
		t.Helper()
		base := []string{"prepare", "--json", "--arch", "amd64", "--format", "qcow2", "--cache-dir", t.TempDir(), "--timeout", "2m"}
		out, err := exec.Command(filepath.Join(c.Bin, "vmprep"), append(append(base, as("alice")...), args...)...).Output()
		var res messages.Result
		if jerr := json.Unmarshal(out, &res); err == nil || jerr != nil || res.Status != messages.ResultFailed || res.Failure == nil || res.Failure.Stage != stageName {
			t.Errorf("a request the %s fails: exit %v, result %s", stageName, err, out)
		}
	}
	failing(messages.StageResolver, "ubuntu", "22.04") // not on the mirror
	disk := m.Path("ubuntu", "24.04", image.ArchAMD64, image.RoleDisk)
	m.SetFault(disk, testmirror.Fault{Status: http.StatusNotFound})
	failing(messages.StageFetcher, "ubuntu", "24.04")
	m.ClearFault(disk)

	aliceCache := t.TempDir()
	res := c.Prepare(image.ArchAMD64, image.FormatRaw, append(as("alice")[2:], "--cache-dir", aliceCache)...).Result(t, 3*time.Minute)
	checkPrepared(t, "alice", m, "24.04", image.ArchAMD64, res, under(t, aliceCache))
	targeted := c.Prepare(image.ArchAMD64, image.FormatRaw, append(as("alice")[2:], "--cache-dir", t.TempDir(), "--target", "mac1")...).Result(t, 3*time.Minute)
	if targeted.Host != "mac1" {
		t.Errorf("a request targeted at mac1 was answered by host %q", targeted.Host)
	}
	checkPrepared(t, "mac1", m, "24.04", image.ArchAMD64, targeted, under(t, converterCache))
	for _, p := range stages {
		if out := p.Output(); strings.Contains(strings.ToLower(out), "permissions violation") {
			t.Errorf("%s was refused something it needs:\n%s", p.Name, out)
		}
	}

	// The fetcher's metrics: healthy, and the bytes it took from the origin.
	addr := regexp.MustCompile(`metrics listening addr=(\S+)`).FindStringSubmatch(stages[1].Output())
	if addr == nil {
		t.Fatalf("the fetcher did not say where its metrics are:\n%s", stages[1].Output())
	}
	if code, body := testutil.Get(t, "http://"+addr[1]+"/healthz"); code != http.StatusOK {
		t.Errorf("fetcher /healthz: %d %s", code, body)
	}
	var served int64
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
		served += m.BytesServed(m.Path("ubuntu", "24.04", image.ArchAMD64, role))
	}
	if v, _ := testutil.Scrape(t, "http://"+addr[1]+"/metrics").Value("vmprep_origin_bytes_total"); int64(v) != served {
		t.Errorf("fetcher vmprep_origin_bytes_total = %v, want %d (what the mirror served)", v, served)
	}

	// The operator sees every stage process alive (each announced itself
	// with its own user), and the dead letters.
	out, err := vmprep(append([]string{"status", "--json"}, as("admin")...)...)
	if err != nil {
		t.Fatalf("vmprep status as admin: %v\n%s", err, out)
	}
	var ov ops.Overview
	if err := json.Unmarshal([]byte(out), &ov); err != nil {
		t.Fatalf("vmprep status --json: %v\n%s", err, out)
	}
	alive := map[string]bool{}
	for _, p := range ov.Processes {
		alive[p.Stage] = p.Consuming
	}
	for _, s := range []string{messages.StageResolver, messages.StageCollector, messages.StageFetcher, messages.StageVerifier, messages.StageConverter} {
		if !alive[s] {
			t.Errorf("vmprep status lists no live %s process: %+v", s, ov.Processes)
		}
	}
	if out, err := vmprep(append([]string{"dead", "ls"}, as("admin")...)...); err != nil {
		t.Errorf("vmprep dead ls as admin: %v\n%s", err, out)
	}

	// What each user must not do, each refused by the server.
	kvKey := messages.RequestKey("bob", res.RequestID)
	denials := []struct {
		name, user string
		// subject the server's permissions violation names
		subject string
		do      func(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error
	}{
		{"fetcher publishes a result", "fetcher", messages.ResultSubjectIn("alice", "forged"), func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, messages.ResultSubjectIn("alice", "forged"), []byte(`{}`))
			return err
		}},
		{"converter publishes a fetch", "converter", messages.SubjectFetch, func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, messages.SubjectFetch, []byte(`{}`))
			return err
		}},
		{"converter pulls the fetcher's work", "converter", "$JS.API.CONSUMER.MSG.NEXT.VMPREP_WORK.fetcher", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return pullOne(nc, messages.StreamWork, messages.StageFetcher)
		}},
		{"fetcher creates a stream", "fetcher", "$JS.API.STREAM.CREATE.MINE", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MINE", Subjects: []string{"mine.>"}})
			return err
		}},
		{"client reads a VMPREP_WORK message", "alice", "$JS.API.STREAM.MSG.GET.VMPREP_WORK", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			_, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.VMPREP_WORK", []byte(`{"seq":1}`))
			return err
		}},
		{"client consumes VMPREP_WORK", "alice", "$JS.API.CONSUMER.CREATE.VMPREP_WORK", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.OrderedConsumer(ctx, messages.StreamWork, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"vmprep.asset.>"}})
			return err
		}},
		{"client pulls the resolver's work", "alice", "$JS.API.CONSUMER.MSG.NEXT.VMPREP_WORK.resolver", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return pullOne(nc, messages.StreamWork, messages.StageResolver)
		}},
		{"client deletes a stream", "alice", "$JS.API.STREAM.DELETE.VMPREP_RESULTS", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			return js.DeleteStream(ctx, messages.StreamResults)
		}},
		{"client publishes an asset event", "alice", "vmprep.asset.x", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return publishFlush(nc, "vmprep.asset.x")
		}},
		{"client publishes another client's request", "alice", messages.PrepareSubject("bob"), func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return publishFlush(nc, messages.PrepareSubject("bob"))
		}},
		{"client subscribes to another client's results", "alice", "vmprep.result.bob.>", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return subscribeFlush(nc, "vmprep.result.bob.>")
		}},
		{"client consumes another client's results", "alice", "$JS.API.CONSUMER.CREATE.VMPREP_RESULTS", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.OrderedConsumer(ctx, messages.StreamResults, jetstream.OrderedConsumerConfig{FilterSubjects: []string{messages.ResultSubjectIn("bob", res.RequestID)}})
			return err
		}},
		{"client subscribes to another client's progress", "alice", "vmprep.progress.bob.>", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return subscribeFlush(nc, "vmprep.progress.bob.>")
		}},
		{"client reads another client's request state", "alice", "$JS.API.DIRECT.GET.KV_VMPREP_REQUESTS.$KV.VMPREP_REQUESTS." + kvKey, func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			_, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.KV_VMPREP_REQUESTS.$KV.VMPREP_REQUESTS."+kvKey, nil)
			return err
		}},
		{"client subscribes to another user's inbox", "alice", "_INBOX_bob.>", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return subscribeFlush(nc, "_INBOX_bob.>")
		}},
		{"client subscribes to the shared inbox", "alice", "_INBOX.>", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return subscribeFlush(nc, "_INBOX.>")
		}},
		{"stage subscribes to a client's inbox", "resolver", "_INBOX_alice.>", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return subscribeFlush(nc, "_INBOX_alice.>")
		}},
		{"client listens to the fetcher's conversion hints", "alice", messages.SubjectConvertAhead, func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return subscribeFlush(nc, messages.SubjectConvertAhead)
		}},
		{"verifier sends a conversion hint", "verifier", messages.SubjectConvertAhead, func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return publishFlush(nc, messages.SubjectConvertAhead)
		}},
	}
	for _, d := range denials {
		t.Run(d.name, func(t *testing.T) {
			violations := make(chan error, 16)
			nc, err := nats.Connect(c.NATS, nats.UserInfo(d.user, passwords[d.user]), nats.CustomInboxPrefix("_INBOX_"+d.user), deployCA(),
				nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := d.do(ctx, nc, js); err == nil {
				t.Errorf("%s: allowed", d.name)
			}
			deadline := time.After(10 * time.Second)
			for {
				select {
				case err := <-violations:
					msg := err.Error()
					if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(msg, `"`+d.subject) {
						return
					}
					t.Logf("other async error: %v", err)
				case <-deadline:
					t.Fatalf("%s: no permissions violation naming %q from the server", d.name, d.subject)
				}
			}
		})
	}
}

// under fails the test for a result's path that is not under dir.
func under(t *testing.T, dir string) func(string) string {
	return func(p string) string {
		t.Helper()
		if !strings.HasPrefix(p, dir+string(os.PathSeparator)) {
			t.Errorf("%s is not under %s", p, dir)
		}
		return p
	}
}

// hasRow reports whether a line of out starts with the fields first, second.
func hasRow(out, first, second string) bool {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == first && f[1] == second {
			return true
		}
	}
	return false
}

// pullOne asks consumer of stream for a message, as a pull consumer does.
func pullOne(nc *nats.Conn, stream, consumer string) error {
	_, err := nc.Request("$JS.API.CONSUMER.MSG.NEXT."+stream+"."+consumer, []byte(`{"batch":1,"no_wait":true}`), 2*time.Second)
	return err
}

func publishFlush(nc *nats.Conn, subject string) error {
	if err := nc.Publish(subject, []byte(`{}`)); err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	return errors.New("a core publish is refused asynchronously")
}

func subscribeFlush(nc *nats.Conn, subject string) error {
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return err
	}
	_, err = sub.NextMsg(time.Second)
	return err
}
