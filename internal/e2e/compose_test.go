package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/lease"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// requireCompose returns the compose command (docker compose, or
// docker-compose), skipping the test where Docker is absent, except in CI
// (CI=true), where the test must run.
func requireCompose(t *testing.T) []string {
	t.Helper()
	var why string
	var compose []string
	if _, err := exec.LookPath("docker"); err != nil {
		why = "docker is not installed"
	} else if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		why = fmt.Sprintf("the Docker daemon does not answer (docker info: %v: %s)", err, bytes.TrimSpace(out))
	} else if exec.Command("docker", "compose", "version").Run() == nil {
		compose = []string{"docker", "compose"}
	} else if _, err := exec.LookPath("docker-compose"); err == nil {
		compose = []string{"docker-compose"}
	} else {
		why = "neither docker compose nor docker-compose is installed"
	}
	if why == "" {
		return compose
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true, and %s: the compose cluster test must run in CI", why)
	}
	t.Skipf("%s: skipping the compose cluster test (in CI, CI=true, it fails instead)", why)
	return nil
}

// composeProject is one run of deploy/docker/docker-compose.yml under a
// project name of its own.
type composeProject struct {
	t       *testing.T
	compose []string
	args    []string // -p NAME -f FILE -f OVERRIDE
	name    string
	env     []string
}

func (p *composeProject) cmd(args ...string) *exec.Cmd {
	all := append(append(append([]string{}, p.compose[1:]...), p.args...), args...)
	cmd := exec.Command(p.compose[0], all...)
	cmd.Env = append(os.Environ(), p.env...)
	return cmd
}

// run runs a compose command and fails the test if it fails.
func (p *composeProject) run(args ...string) string {
	p.t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := p.cmd(args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		p.t.Fatalf("%s %s: %v\n%s%s", strings.Join(p.compose, " "), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

// container is the id of a service's index'th container (1-based).
func (p *composeProject) container(service string, index int) string {
	p.t.Helper()
	out, err := exec.Command("docker", "ps", "-a", "-q", "--no-trunc",
		"--filter", "label=com.docker.compose.project="+p.name,
		"--filter", "label=com.docker.compose.service="+service,
		"--filter", fmt.Sprintf("label=com.docker.compose.container-number=%d", index)).Output()
	id := strings.TrimSpace(string(out))
	if err != nil || id == "" || strings.Contains(id, "\n") {
		p.t.Fatalf("container %d of %s: %q, %v", index, service, id, err)
	}
	return id
}

// port is the host address (127.0.0.1:N) a container port is published on.
func (p *composeProject) port(service string, index, port int) string {
	p.t.Helper()
	out := p.run("port", "--index", fmt.Sprint(index), service, fmt.Sprint(port))
	if !strings.HasPrefix(out, "127.0.0.1:") {
		p.t.Fatalf("%s %d: port %d is published on %q, want 127.0.0.1", service, index, port, out)
	}
	return out
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// poll calls cond every 250 ms until it holds, failing the test after timeout.
func poll(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func healthy(addr string) bool {
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// clientRun is one vmprep prepare --nats run of the client alice.
type clientRun struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan error
}

func (r *clientRun) result(t *testing.T, timeout time.Duration) messages.Result {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("vmprep prepare: %v\nstderr: %s\nstdout: %s", err, r.stderr.String(), r.stdout.String())
		}
	case <-time.After(timeout):
		_ = r.cmd.Process.Kill()
		<-r.done
		t.Fatalf("vmprep prepare did not finish within %s; stderr: %s", timeout, r.stderr.String())
	}
	var res messages.Result
	if err := json.Unmarshal(r.stdout.Bytes(), &res); err != nil {
		t.Fatalf("prepare output is not a result: %v\n%s", err, r.stdout.String())
	}
	if res.Status != messages.ResultPrepared {
		t.Fatalf("status %s: %+v", res.Status, res.Failure)
	}
	return res
}

// The deployment of deploy/docker, for real: images built FROM scratch, a
// three-node NATS cluster with a user per stage, a resolver, two fetchers, a
// verifier and two converter hosts, downloading from a test mirror that the
// containers reach on their network's gateway. A client (alice) prepares
// images through a published NATS port; a targeted request lands in host1's
// volume; a NATS node stops while a download runs, a fetcher is cut off the
// network while it downloads, and host1 while work for it waits: the
// requests still complete with exact files, and both rejoin.
func TestComposeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds images and runs a compose deployment")
	}
	compose := requireCompose(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "deploy", "docker")
	tmp := t.TempDir()
	const tag = "e2e"

	// Images (kept afterwards: the next run reuses their layers), and the
	// static binaries, of which this test runs vmprep as the client.
	bin := filepath.Join(tmp, "bin")
	build := exec.Command(filepath.Join(dir, "build.sh"))
	build.Env = append(os.Environ(), "VMPREP_IMAGE_TAG="+tag, "VMPREP_BIN_DIR="+bin)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}

	secrets := filepath.Join(tmp, "secrets")
	secretsCmd := exec.Command(filepath.Join(dir, "secrets.sh"), secrets)
	// The hashes and the converter hosts' users come from the vmprep built here.
	secretsCmd.Env = append(os.Environ(), "VMPREP="+filepath.Join(bin, "vmprep"), "VMPREP_IMAGE_TAG="+tag)
	if out, err := secretsCmd.CombinedOutput(); err != nil {
		t.Fatalf("secrets.sh: %v\n%s", err, out)
	}

	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := "vmprep-e2e-" + hex.EncodeToString(suffix)
	network := name + "-net"
	// The network is made first, so that the mirror can listen on its
	// gateway address before the resolver is told the mirror's URL. It is
	// made twice: Docker picks a free subnet, and the second network has
	// that subnet as its own setting, which lets a container be reconnected
	// with another address.
	docker(t, "network", "create", network)
	subnet := docker(t, "network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", network)
	gateway := docker(t, "network", "inspect", "--format", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", network)
	docker(t, "network", "rm", network)
	docker(t, "network", "create", "--label", "vmprep-e2e=1", "--subnet", subnet, "--gateway", gateway, network)
	prefix, err := netip.ParsePrefix(subnet)
	if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 28 {
		t.Fatalf("network %s: subnet %q, gateway %q: want an IPv4 subnet of 16 addresses or more", network, subnet, gateway)
	}
	p := &composeProject{t: t, compose: compose, name: name}
	var natsURL string    // once the cluster is up
	var requests []string // the request ids of alice's runs
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := p.cmd("logs", "--no-color", "--tail", "200", "resolver", "fetcher", "verifier", "converter-host1", "converter-host2").CombinedOutput()
			t.Logf("compose logs:\n%s", out)
			for _, id := range append([]string{""}, requests...) {
				if natsURL == "" {
					break
				}
				args := []string{"status", "--nats", natsURL, "--user", "admin", "--password-file", filepath.Join(secrets, "admin.password"), "--tls-ca", filepath.Join(secrets, "ca.pem")}
				if id != "" {
					args = append(args, id)
				}
				out, _ := exec.Command(filepath.Join(bin, "vmprep"), args...).CombinedOutput()
				t.Logf("vmprep %s:\n%s", strings.Join(args, " "), out)
			}
		}
		if out, err := p.cmd("down", "-v", "--remove-orphans", "-t", "5").CombinedOutput(); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
		if out, err := exec.Command("docker", "network", "rm", network).CombinedOutput(); err != nil {
			t.Errorf("docker network rm %s: %v\n%s", network, err, out)
		}
	})

	// Four image sets, so that each phase below downloads something new.
	// The mirror is throttled so that downloads last while things break.
	m := testmirror.New(t, testmirror.WithUbuntu("22.04", "24.04"), testmirror.WithListenAddr(gateway+":0"),
		testmirror.WithDiskSize(32<<20, 6<<20), testmirror.WithGzipKernel())

	override := filepath.Join(tmp, "override.yml")
	if err := os.WriteFile(override, fmt.Appendf(nil, `
services:
  resolver:
    environment:
      VMPREP_MIRROR: %q
      VMPREP_KEYRING: /etc/vmprep/keyring.asc
    volumes: [%q]
networks:
  default:
    external: true
    name: %s
`, m.URL, m.KeyringFile()+":/etc/vmprep/keyring.asc:ro", network), 0o644); err != nil {
		t.Fatal(err)
	}
	p.args = []string{"--project-name", name, "-f", filepath.Join(dir, "docker-compose.yml"), "-f", override}
	// Debug logs: on failure, the stages' last lines say what each did.
	p.env = []string{"VMPREP_IMAGE_TAG=" + tag, "VMPREP_SECRETS=" + secrets, "VMPREP_LOG_LEVEL=debug", "COMPOSE_INTERACTIVE_NO_CLI=1"}
	p.run("up", "-d", "--no-color")

	stages := []struct {
		service string
		index   int
	}{{"resolver", 1}, {"fetcher", 1}, {"fetcher", 2}, {"verifier", 1}, {"converter-host1", 1}, {"converter-host2", 1}}
	metrics := map[string]string{}
	for _, s := range stages {
		addr := p.port(s.service, s.index, 9102)
		metrics[fmt.Sprintf("%s/%d", s.service, s.index)] = addr
		poll(t, s.service+" /healthz", 2*time.Minute, func() bool { return healthy(addr) })
	}
	var urls []string
	for _, n := range []string{"nats1", "nats2", "nats3"} {
		urls = append(urls, "nats://"+p.port(n, 1, 4222))
	}
	natsURL = strings.Join(urls, ",")

	// No password, and no route secret, in clear in any container's
	// environment (docker inspect shows it to whoever may use Docker):
	// the nodes have bcrypt hashes, the stages password files.
	var secretValues []string
	for _, u := range []string{"admin", "resolver", "fetcher", "verifier", "converter", "alice", "bob", "route"} {
		b, err := os.ReadFile(filepath.Join(secrets, u+".password"))
		if err != nil {
			t.Fatal(err)
		}
		secretValues = append(secretValues, strings.TrimSpace(string(b)))
	}
	for _, svc := range []string{"nats1", "nats2", "nats3", "setup", "resolver", "fetcher", "verifier", "converter-host1"} {
		env := docker(t, "inspect", "--format", "{{json .Config.Env}}", p.container(svc, 1))
		for _, v := range secretValues {
			if strings.Contains(env, v) {
				t.Errorf("%s has a password in clear in its environment", svc)
			}
		}
	}

	// A nats-server in a container on the compose network dials nats1:6222
	// as a route, with a wrong secret and no certificate: nats1 refuses it,
	// and a subscriber on the rogue sees nothing of what the cluster carries.
	// (Before routes authenticated, it read every message and wrote results.)
	rogue := docker(t, "run", "-d", "--rm", "--network", network, "--publish", "127.0.0.1::4222",
		"vmprep-nats:"+tag, "--cluster_name", "vmprep", "--cluster", "nats://0.0.0.0:6222",
		"--routes", "nats-route://route:wrong@nats1:6222", "-n", "rogue")
	defer func() { _, _ = exec.Command("docker", "rm", "-f", rogue).CombinedOutput() }()
	rogueAddr := strings.TrimSpace(docker(t, "port", rogue, "4222/tcp"))
	rogueAddr = strings.Split(rogueAddr, "\n")[0]
	var spy *nats.Conn
	poll(t, "the rogue's client port", time.Minute, func() bool {
		spy, err = nats.Connect("nats://" + rogueAddr)
		return err == nil
	})
	defer spy.Close()
	seen, err := spy.SubscribeSync(">")
	if err != nil || spy.Flush() != nil {
		t.Fatalf("subscribe on the rogue: %v", err)
	}
	poll(t, "nats1 to refuse the rogue route", time.Minute, func() bool {
		out, _ := exec.Command("docker", "logs", p.container("nats1", 1)).CombinedOutput()
		return strings.Contains(string(out), "TLS route handshake error") || strings.Contains(string(out), "authentication error")
	})
	probe, err := (&cli.Connection{NATSURL: natsURL, User: "admin", PasswordFile: filepath.Join(secrets, "admin.password"),
		TLSCA: filepath.Join(secrets, "ca.pem")}).Connect("e2e-probe", slog.New(slog.NewTextHandler(io.Discard, nil)), false)
	if err != nil {
		t.Fatalf("connect as admin: %v", err)
	}
	if err := probe.Publish("vmprep.progress.alice.probe", []byte("alice's progress")); err != nil || probe.Flush() != nil {
		t.Fatalf("publish as admin: %v", err)
	}
	probe.Close()
	if m, err := seen.NextMsg(3 * time.Second); err == nil {
		t.Errorf("a rogue server on the compose network received %q on %s", m.Data, m.Subject)
	}

	prepare := func(version string, arch image.Arch, format image.DiskFormat, extra ...string) *clientRun {
		r := &clientRun{done: make(chan error, 1)}
		id := fmt.Sprintf("compose-%d", len(requests)+1)
		requests = append(requests, id)
		args := append([]string{"prepare", "--request-id", id, "--nats", natsURL, "--user", "alice", "--password-file", filepath.Join(secrets, "alice.password"),
			"--tls-ca", filepath.Join(secrets, "ca.pem"), "--namespace", "alice", "--cache-dir", filepath.Join(tmp, "alice-cache"), "--json",
			"--arch", string(arch), "--format", string(format)}, extra...)
		r.cmd = exec.Command(filepath.Join(bin, "vmprep"), append(args, "ubuntu", version)...)
		r.cmd.Env = append(os.Environ(), "NATS_URL=", "VMPREP_LOG_LEVEL=warn")
		r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { r.done <- r.cmd.Wait() }()
		return r
	}
	onHost := func(p string) string { return p }
	const timeout = 3 * time.Minute

	// 1. alice prepares a raw image for herself: the stages fetch and verify
	// into the bucket, her vmprep pulls and converts.
	res := prepare("24.04", image.ArchAMD64, image.FormatRaw).result(t, timeout)
	checkPrepared(t, "alice", m, "24.04", image.ArchAMD64, res, onHost)

	// 2. The same image, raw, for host1: converted there, into host1's volume.
	res = prepare("24.04", image.ArchAMD64, image.FormatRaw, "--target", "host1").result(t, timeout)
	if res.Host != "host1" {
		t.Fatalf("targeted result names host %q, want host1", res.Host)
	}
	// copyOut returns a function that copies a file out of a container
	// (docker cp) into a directory of its own, and says where.
	copies := 0
	copyOut := func(container string) func(string) string {
		copies++
		dir := filepath.Join(tmp, fmt.Sprintf("copied-%d", copies))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return func(path string) string {
			dst := filepath.Join(dir, filepath.Base(path))
			docker(t, "cp", "-L", container+":"+path, dst)
			return dst
		}
	}
	host1 := p.container("converter-host1", 1)
	checkPrepared(t, "alice", m, "24.04", image.ArchAMD64, res, copyOut(host1))

	// 3. nats2 stops while a download runs: the request completes, and so
	// does the next one (new downloads, two nodes of three).
	m.Throttle(1 << 20)
	disk := m.Path("ubuntu", "24.04", image.ArchARM64, image.RoleDisk)
	run := prepare("24.04", image.ArchARM64, image.FormatRaw)
	poll(t, "the arm64 disk's download to start", timeout, func() bool { return m.BytesServed(disk) > 0 })
	p.run("stop", "-t", "5", "nats2")
	checkPrepared(t, "alice", m, "24.04", image.ArchARM64, run.result(t, timeout), onHost)
	res = prepare("22.04", image.ArchAMD64, image.FormatQCOW2).result(t, timeout)
	checkPrepared(t, "alice", m, "22.04", image.ArchAMD64, res, onHost)
	p.run("start", "nats2")

	// 4. The fetcher that downloads is cut off the network (the lease on the
	// disk's digest names it): the other one takes the work over once the
	// lease lapses, and the request completes; reconnected, the first one
	// rejoins (it notices its dead connection and announces itself again).
	conn := cli.Connection{NATSURL: natsURL, User: "admin", PasswordFile: filepath.Join(secrets, "admin.password"), TLSCA: filepath.Join(secrets, "ca.pem")}
	admin, err := conn.Connect("e2e-admin", slog.New(slog.NewTextHandler(io.Discard, nil)), false)
	if err != nil {
		t.Fatalf("connect as admin: %v", err)
	}
	defer admin.Close()
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	fetcherHosts := map[string]int{}
	for i := 1; i <= 2; i++ {
		fetcherHosts[docker(t, "inspect", "--format", "{{.Config.Hostname}}", p.container("fetcher", i))] = i
	}
	disk = m.Path("ubuntu", "22.04", image.ArchARM64, image.RoleDisk)
	run = prepare("22.04", image.ArchARM64, image.FormatRaw, "--target", "host2")
	cut := 0
	poll(t, "a fetcher to take the lease on the 22.04 arm64 disk", timeout, func() bool {
		select {
		case err := <-run.done:
			t.Fatalf("vmprep prepare ended before a fetcher took the lease: %v\nstderr: %s\nstdout: %s", err, run.stderr.String(), run.stdout.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		kv, err := js.KeyValue(ctx, "VMPREP_LEASES")
		if err != nil {
			return false
		}
		e, err := kv.Get(ctx, "sha256."+m.Digest(disk).Hex)
		if err != nil {
			return false
		}
		var rec lease.Record
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			t.Fatalf("lease record %q: %v", e.Value(), err)
		}
		host, _, _ := strings.Cut(rec.Holder, "/")
		if cut = fetcherHosts[host]; cut == 0 {
			t.Fatalf("the disk's lease is held by %q, not by a fetcher (%v)", rec.Holder, fetcherHosts)
		}
		return true
	})
	cutID := p.container("fetcher", cut)
	cutHost := docker(t, "inspect", "--format", "{{.Config.Hostname}}", cutID)
	docker(t, "network", "disconnect", network, cutID)
	disconnected := time.Now()
	res = run.result(t, timeout)
	if res.Host != "host2" {
		t.Fatalf("targeted result names host %q, want host2", res.Host)
	}
	checkPrepared(t, "alice", m, "22.04", image.ArchARM64, res, copyOut(p.container("converter-host2", 1)))
	// Back on the network with another address, as a host that comes back
	// from an outage with a new lease: its old connection is dead without a
	// word (what it sends leaves from an address that is gone, what the
	// server sends goes nowhere), which only its pings can tell.
	docker(t, "network", "connect", "--ip", lastAddr(prefix, 3).String(), network, cutID)
	reconnected := time.Now()
	t.Logf("fetcher %d (%s) was cut off for %s", cut, cutHost, reconnected.Sub(disconnected).Round(time.Second))

	poll(t, "the cut-off fetcher to announce itself again", 2*time.Minute, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		procs, err := ops.Processes(ctx, js)
		if err != nil {
			t.Logf("liveness entries: %v", err)
			return false
		}
		for _, pr := range procs {
			if pr.Stage == messages.StageFetcher && pr.Host == cutHost && pr.Seen.After(reconnected) && pr.Consuming {
				return true
			}
		}
		return false
	})
	t.Logf("it announced itself again %s after it was reconnected", time.Since(reconnected).Round(time.Second))
	addr := p.port("fetcher", cut, 9102)
	poll(t, "the cut-off fetcher's /healthz", time.Minute, func() bool { return healthy(addr) })
	metrics[fmt.Sprintf("fetcher/%d", cut)] = addr

	// 5. host1 is cut off the network, and a request for host1 waits for it
	// in host1's consumer; back with another address, host1's converter
	// notices its dead connection, reconnects and does the work.
	docker(t, "network", "disconnect", network, host1)
	run = prepare("24.04", image.ArchARM64, image.FormatRaw, "--target", "host1")
	poll(t, "work for host1 in its consumer", timeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, messages.StreamWork, "converter_host1")
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending+uint64(info.NumAckPending) > 0
	})
	docker(t, "network", "connect", "--ip", lastAddr(prefix, 4).String(), network, host1)
	res = run.result(t, timeout)
	if res.Host != "host1" {
		t.Fatalf("targeted result names host %q, want host1", res.Host)
	}
	checkPrepared(t, "alice", m, "24.04", image.ArchARM64, res, copyOut(host1))
	metrics["converter-host1/1"] = p.port("converter-host1", 1, 9102)
	poll(t, "host1's /healthz", time.Minute, func() bool { return healthy(metrics["converter-host1/1"]) })

	// Every stage's metrics endpoint answers in Prometheus's format; the
	// ones that had work to do have counted it.
	for name, addr := range metrics {
		fams := testutil.Scrape(t, "http://"+addr+"/metrics")
		if _, ok := fams.Value("vmprep_build_info"); !ok {
			t.Errorf("%s: no vmprep_build_info in /metrics", name)
		}
		consumer := map[string]string{"resolver/1": "resolver", "verifier/1": "verifier", "converter-host1/1": "converter_host1", "converter-host2/1": "converter_host2"}[name]
		if v, _ := fams.Value("vmprep_messages_handled_total", "stage", consumer, "outcome", string(stage.OutcomeOK)); consumer != "" && v == 0 {
			t.Errorf("%s: vmprep_messages_handled_total{stage=%q,outcome=\"ok\"} is 0 after the requests above", name, consumer)
		}
	}
	m.Throttle(0)
}

// lastAddr is the n'th address from the end of an IPv4 prefix (0 is its
// broadcast address): far from the ones Docker hands out from the start.
func lastAddr(p netip.Prefix, n uint32) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v-n)
	return netip.AddrFrom4(a)
}
