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
	"slices"
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

// deployWithHosts copies deploy/nats into a directory, gives the converter
// hosts their own users there (vmprep users converters, as an operator
// does), adds each host user's password and password file to passwords and
// files (deployPasswords's), and returns the three node configurations.
func deployWithHosts(t *testing.T, bin string, passwords, files map[string]string, hosts ...string) (confs []string) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join("..", "..", "deploy", "nats")
	confFiles, err := filepath.Glob(filepath.Join(src, "*.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range confFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(filepath.Join(bin, "vmprep"), "users", "converters", "--hosts", strings.Join(hosts, ","),
		"--auth", filepath.Join(dir, "auth.conf"), "--out", dir, "--cost", "6").CombinedOutput()
	if err != nil {
		t.Fatalf("vmprep users converters: %v\n%s", err, out)
	}
	for _, h := range hosts {
		user := messages.TargetConsumer(h)
		f := filepath.Join(dir, user+".password")
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		passwords[user], files[user] = strings.TrimSpace(string(b)), f
	}
	for i := 1; i <= 3; i++ {
		confs = append(confs, filepath.Join(dir, fmt.Sprintf("node%d.conf", i)))
	}
	return confs
}

// TestStageConsumersOwnOnly runs deploy/nats as a three-node cluster with
// two converter hosts, each with its own user, and shows that no stage user
// can create, update or delete any consumer of VMPREP_WORK (not even its
// own), nor pull from or acknowledge another's — each refused by the server
// with a permissions violation, and every consumer as setup made it
// afterwards — while each still serves its own: a request targeted at mac1
// is converted by mac1's converter. Then the drift an operator (or a
// hijacker with admin's rights) makes: status, /readyz, /healthz and the
// metric say so, the stage takes no work and a new one refuses to start,
// until setup restores the consumer.
func TestStageConsumersOwnOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	passwords, pwFiles := deployPasswords(t)
	bin := cluster.Build(t)
	confs := deployWithHosts(t, bin, passwords, pwFiles, "mac1", "mac2")
	c, _ := cluster.NewNATSClusterFromConfigs(t, bin, confs)
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(32<<20, 8<<20))
	as := func(user string) []string {
		return []string{"--nats", c.NATS, "--user", user, "--password-file", pwFiles[user]}
	}
	vmprep := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(c.Bin, "vmprep"), args...).CombinedOutput()
		return string(out), err
	}
	if out, err := vmprep(append([]string{"setup", "--store", "nats:" + cluster.Bucket, "--replicas", "3", "--hosts", "mac1,mac2"}, as("admin")...)...); err != nil {
		t.Fatalf("vmprep setup as admin: %v\n%s", err, out)
	} else if !hasRow(out, "VMPREP_WORK.converter_mac2", "30s") {
		t.Errorf("vmprep setup --hosts mac1,mac2 made no consumer converter_mac2:\n%s", out)
	}

	// Who owns which consumer of VMPREP_WORK (to pull from and ack).
	owns := map[string][]string{
		"resolver":       {messages.StageResolver, messages.StageCollector},
		"fetcher":        {messages.StageFetcher},
		"verifier":       {messages.StageVerifier},
		"converter":      {messages.StageConverter},
		"converter_mac1": {messages.StageConverter, "converter_mac1"},
		"converter_mac2": {messages.StageConverter, "converter_mac2"},
	}
	consumers := []string{messages.StageResolver, messages.StageCollector, messages.StageFetcher, messages.StageVerifier,
		messages.StageConverter, "converter_mac1", "converter_mac2"}
	type attempt struct{ what, subject string }
	for user, own := range owns {
		var attempts []attempt
		for _, cons := range consumers {
			// Creating, updating (a create on an existing durable), the
			// legacy durable create and deleting: nobody but admin.
			attempts = append(attempts,
				attempt{"update " + cons + "'s filter", "$JS.API.CONSUMER.CREATE.VMPREP_WORK." + cons + ".vmprep.asset.target.evil"},
				attempt{"create " + cons, "$JS.API.CONSUMER.CREATE.VMPREP_WORK." + cons},
				attempt{"legacy create " + cons, "$JS.API.CONSUMER.DURABLE.CREATE.VMPREP_WORK." + cons},
				attempt{"delete " + cons, "$JS.API.CONSUMER.DELETE.VMPREP_WORK." + cons},
			)
			if !slices.Contains(own, cons) {
				attempts = append(attempts,
					attempt{"pull " + cons + "'s work", "$JS.API.CONSUMER.MSG.NEXT.VMPREP_WORK." + cons},
					attempt{"ack " + cons + "'s message", "$JS.ACK.VMPREP_WORK." + cons + ".1.1.1.1700000000000000000.0"},
				)
			}
		}
		t.Run(user, func(t *testing.T) {
			violations := make(chan error, 64)
			nc, err := nats.Connect(c.NATS, deployCA(), nats.UserInfo(user, passwords[user]), nats.CustomInboxPrefix("_INBOX_"+user),
				nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			for _, a := range attempts {
				body := fmt.Sprintf(`{"stream_name":"VMPREP_WORK","config":{"durable_name":%q,"filter_subject":"vmprep.asset.target.evil","ack_policy":"explicit"}}`,
					strings.Split(strings.TrimPrefix(a.subject, "$JS.API.CONSUMER."), ".")[2])
				if err := nc.PublishRequest(a.subject, nc.NewRespInbox(), []byte(body)); err != nil {
					t.Fatal(err)
				}
				if err := nc.Flush(); err != nil {
					t.Fatal(err)
				}
				if !violated(t, violations, a.subject) {
					t.Errorf("%s may %s (%s): no permissions violation", user, a.what, a.subject)
				}
			}
			// Its own consumers it may still pull from.
			for _, cons := range own {
				msg, err := nc.Request("$JS.API.CONSUMER.MSG.NEXT.VMPREP_WORK."+cons, []byte(`{"batch":1,"no_wait":true}`), 5*time.Second)
				if err != nil {
					t.Errorf("%s pulling from its own consumer %s: %v", user, cons, err)
				} else if st := msg.Header.Get("Status"); st != "404" && st != "408" && st != "" {
					t.Errorf("%s pulling from its own consumer %s: status %s %s", user, cons, st, msg.Header.Get("Description"))
				}
			}
		})
	}
	// Whatever the server said, nothing changed.
	ov := status(t, vmprep, as("admin"))
	if len(ov.Drifted) != 0 {
		t.Errorf("consumers changed by stage users: %v", ov.Drifted)
	}
	for _, cons := range consumers {
		if !slices.ContainsFunc(ov.Consumers, func(s ops.ConsumerState) bool { return s.Name == cons }) {
			t.Errorf("consumer %s is gone", cons)
		}
	}

	// Each stage serves its own consumers: a request targeted at mac1 is
	// converted by mac1's converter, running as converter_mac1.
	stageArgs := func(user string) []string {
		return append(as(user), "--store", "nats:"+cluster.Bucket, "--replicas", "3", "--cache-dir", t.TempDir(), "--drain-timeout", "2s")
	}
	fetcher := c.Start("fetcher", append(stageArgs("fetcher"), "--metrics-listen", "127.0.0.1:0", "--drift-check", "500ms")...)
	mac1Cache := t.TempDir()
	stages := []*cluster.Proc{
		c.Start("resolver", append(stageArgs("resolver"), "--mirror", m.URL, "--keyring", m.KeyringFile())...),
		fetcher,
		c.Start("verifier", stageArgs("verifier")...),
		c.Start("converter", append(as("converter_mac1"), "--store", "nats:"+cluster.Bucket, "--cache-dir", mac1Cache, "--target", "mac1")...),
	}
	res := c.Prepare(image.ArchAMD64, image.FormatRaw, append(as("alice")[2:], "--cache-dir", t.TempDir(), "--target", "mac1")...).Result(t, 3*time.Minute)
	if res.Status != messages.ResultPrepared || res.Host != "mac1" {
		t.Fatalf("a request targeted at mac1: %+v", res)
	}
	checkPrepared(t, "mac1", m, "24.04", image.ArchAMD64, res, under(t, mac1Cache))
	for _, p := range stages {
		if out := p.Output(); strings.Contains(strings.ToLower(out), "permissions violation") {
			t.Errorf("%s was refused something it needs:\n%s", p.Name, out)
		}
	}
	// mac1's converter announced itself under its host name, the one key
	// its user may write.
	ov = status(t, vmprep, as("admin"))
	if !slices.ContainsFunc(ov.Processes, func(p ops.Process) bool { return p.Stage == messages.StageConverter && p.Host == "mac1" && p.Consuming }) {
		t.Errorf("no live converter on mac1 in vmprep status: %+v", ov.Processes)
	}
	// mac2's user cannot serve mac1.
	mac2AsMac1 := c.Start("converter#mac2-as-mac1", append(as("converter_mac2"), "--store", "nats:"+cluster.Bucket, "--cache-dir", t.TempDir(), "--target", "mac1")...)
	if st, ok := mac2AsMac1.Wait(time.Minute); !ok || st.Success() {
		t.Errorf("mac2's user started as mac1's converter (exited: %v):\n%s", ok, mac2AsMac1.Output())
	}

	// Drift: the fetcher's consumer rewritten (an admin's mistake, or a
	// hijack with a deployment's older permissions).
	addr := regexp.MustCompile(`metrics listening addr=(\S+)`).FindStringSubmatch(fetcher.Output())
	if addr == nil {
		t.Fatalf("the fetcher did not say where its metrics are:\n%s", fetcher.Output())
	}
	base := "http://" + addr[1]
	if code, body := testutil.Get(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("fetcher /readyz before the change: %d %s", code, body)
	}
	admin := connectAs(t, c.NATS, "admin", passwords["admin"])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := admin.Consumer(ctx, messages.StreamWork, messages.StageFetcher)
	if err != nil {
		t.Fatal(err)
	}
	cc := cons.CachedInfo().Config
	cc.FilterSubject = messages.TargetSubject("evil")
	if _, err := admin.UpdateConsumer(ctx, messages.StreamWork, cc); err != nil {
		t.Fatal(err)
	}
	cluster.WaitFor(t, "fetcher /readyz saying its consumer changed", time.Minute, func() bool {
		code, body := testutil.Get(t, base+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "consumer fetcher of stream VMPREP_WORK was changed since setup made it") &&
			strings.Contains(body, `filter subjects is ["vmprep.asset.target.evil"]`)
	})
	if code, body := testutil.Get(t, base+"/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("fetcher /healthz on a changed consumer: %d %s", code, body)
	}
	if v, _ := testutil.Scrape(t, base+"/metrics").Value("vmprep_consumer_drift", "consumer", messages.StageFetcher); v != 1 {
		t.Errorf("fetcher vmprep_consumer_drift = %v, want 1", v)
	}
	if out, err := vmprep(append([]string{"status"}, as("admin")...)...); err != nil || !strings.Contains(out, "CHANGED SINCE SETUP: consumer fetcher") {
		t.Errorf("vmprep status does not say the fetcher's consumer changed (%v):\n%s", err, out)
	}
	late := c.Start("fetcher#late", stageArgs("fetcher")...)
	if st, ok := late.Wait(time.Minute); !ok || st.Success() || !strings.Contains(late.Output(), "was changed since setup made it") {
		t.Errorf("a fetcher starting on the changed consumer (exited: %v):\n%s", ok, late.Output())
	}
	if out, err := vmprep(append([]string{"setup", "--store", "nats:" + cluster.Bucket, "--replicas", "3", "--hosts", "mac1,mac2"}, as("admin")...)...); err != nil {
		t.Fatalf("vmprep setup again: %v\n%s", err, out)
	}
	cluster.WaitFor(t, "fetcher /readyz after setup restored its consumer", time.Minute, func() bool {
		code, _ := testutil.Get(t, base+"/readyz")
		return code == http.StatusOK
	})
	if v, _ := testutil.Scrape(t, base+"/metrics").Value("vmprep_consumer_drift", "consumer", messages.StageFetcher); v != 0 {
		t.Errorf("fetcher vmprep_consumer_drift after setup = %v, want 0", v)
	}
}

// violated waits for the server's permissions violation naming subject.
func violated(t *testing.T, violations <-chan error, subject string) bool {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-violations:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
				return true
			}
			t.Logf("other async error: %v", err)
		case <-deadline:
			return false
		}
	}
}

func status(t *testing.T, vmprep func(...string) (string, error), as []string) ops.Overview {
	t.Helper()
	out, err := vmprep(append([]string{"status", "--json"}, as...)...)
	if err != nil {
		t.Fatalf("vmprep status: %v\n%s", err, out)
	}
	var ov ops.Overview
	if err := json.Unmarshal([]byte(out), &ov); err != nil {
		t.Fatalf("vmprep status --json: %v\n%s", err, out)
	}
	return ov
}

func connectAs(t *testing.T, url, user, password string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, deployCA(), nats.UserInfo(user, password), nats.CustomInboxPrefix("_INBOX_"+user))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
