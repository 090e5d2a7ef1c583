package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
)

// Bucket is the object bucket the multi-host tests use (--store nats:Bucket).
const Bucket = "vmprep"

// RequireNamespaces skips tb unless processes can be put into mount
// namespaces of their own (root and unshare(1)); under CI=true it fails
// instead, since CI must run these tests.
func RequireNamespaces(tb testing.TB) {
	tb.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := exec.LookPath("unshare"); err != nil {
		why = "unshare(1) not found (util-linux)"
	} else if out, err := exec.Command("unshare", "-m", "--propagation", "private", "true").CombinedOutput(); err != nil {
		why = fmt.Sprintf("unshare -m failed: %v %s", err, out)
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("separate-host tests need mount namespaces: %s", why)
	}
	tb.Skipf("separate-host tests need mount namespaces (root and unshare): %s", why)
}

// Host is one simulated machine. Its processes run in a mount namespace of
// their own in which the host's private directory is bind-mounted over the
// path every host uses (MountPoint): a path one host hands another names a
// different file system there, as it would across machines.
type Host struct {
	c    *Cluster
	Name string
	// Dir is the host's directory as the test (outside every namespace) sees it.
	Dir string
}

// MountPoint is the path at which every host sees its own directory; its
// cache directory is MountPoint itself.
func (c *Cluster) MountPoint() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mountPoint == "" {
		c.mountPoint = c.tb.TempDir()
	}
	return c.mountPoint
}

// Host returns a new host named name.
func (c *Cluster) Host(name string) *Host {
	c.tb.Helper()
	RequireNamespaces(c.tb)
	dir := filepath.Join(c.tb.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.tb.Fatal(err)
	}
	c.MountPoint()
	return &Host{c: c, Name: name, Dir: dir}
}

// Real maps a path this host's processes reported (under MountPoint) to
// where the test finds it.
func (h *Host) Real(p string) string {
	mp := h.c.MountPoint()
	if p == mp || strings.HasPrefix(p, mp+string(os.PathSeparator)) {
		return filepath.Join(h.Dir, strings.TrimPrefix(p, mp))
	}
	return p
}

// command wraps bin args in the host's namespace.
func (h *Host) command(exe string, args ...string) *exec.Cmd {
	script := `mount --bind "$1" "$2" && shift 2 && exec "$@"`
	full := append([]string{"-m", "--propagation", "private", "sh", "-c", script, "sh", h.Dir, h.c.MountPoint(), filepath.Join(h.c.Bin, exe)}, args...)
	return exec.Command("unshare", full...)
}

// Start runs a binary on the host.
func (h *Host) Start(name string, args ...string) *Proc {
	h.c.tb.Helper()
	exe, _, _ := strings.Cut(name, "#")
	cmd := h.command(exe, args...)
	return h.c.startCmd(h.Name+"/"+name, cmd)
}

// Stage starts a stage process on the host against the object store, with
// its cache at MountPoint.
func (h *Host) Stage(name string, extra ...string) *Proc {
	exe, _, _ := strings.Cut(name, "#")
	args := []string{"--nats", h.c.NATS, "--cache-dir", h.c.MountPoint(), "--store", "nats:" + Bucket,
		"--ack-wait", "3s", "--concurrency", "2", "--drain-timeout", "2s"}
	if h.c.Replicas > 0 {
		args = append(args, "--replicas", fmt.Sprint(h.c.Replicas))
	}
	if exe == "resolver" {
		if h.c.MirrorURL != "" {
			args = append(args, "--mirror", h.c.MirrorURL)
		}
		if h.c.KeyringFile != "" {
			args = append(args, "--keyring", h.c.KeyringFile)
		}
	}
	return h.Start(name, append(args, extra...)...)
}

// Prepare runs `vmprep prepare --nats … --json` on the host, its cache at
// MountPoint.
func (h *Host) Prepare(arch catalog.Arch, format catalog.DiskFormat, extra ...string) *PrepareRun {
	r := &PrepareRun{done: make(chan error, 1)}
	args := append([]string{"prepare", "--nats", h.c.NATS, "--cache-dir", h.c.MountPoint(), "--json",
		"--arch", string(arch), "--format", string(format)}, extra...)
	r.cmd = h.command("vmprep", append(args, "ubuntu", "24.04")...)
	if err := r.run(); err != nil {
		h.c.tb.Fatal(err)
	}
	r.showOnFailure(h.c.tb, "vmprep prepare on "+h.Name)
	return r
}

// startCmd starts cmd as a tracked process.
func (c *Cluster) startCmd(name string, cmd *exec.Cmd) *Proc {
	c.tb.Helper()
	buf := &testutil.LockedBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.Env = append(os.Environ(), "VMPREP_LOG_FORMAT=text", "VMPREP_LOG_LEVEL=info")
	if err := cmd.Start(); err != nil {
		c.tb.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, out: buf, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p
}

// NATSNode is one nats-server process of a cluster.
type NATSNode struct {
	Name    string
	server  string
	URL     string
	Monitor string
	// RoutePort is the node's cluster (route) port on 127.0.0.1.
	RoutePort int
	args      []string
	bin       string
	c         *Cluster
	Proc      *Proc
}

// Kill9 kills the node's server with SIGKILL.
func (n *NATSNode) Kill9(tb testing.TB) { n.Proc.Kill9(tb) }

// Restart starts the node again on the same ports and storage.
func (n *NATSNode) Restart(tb testing.TB) {
	tb.Helper()
	n.Proc = n.c.startCmd(n.Name, exec.Command(n.bin, n.args...))
}

// FreePorts returns n free loopback TCP ports.
func FreePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// NewNATSCluster starts a cluster of n real nats-server processes (built
// from go.mod's version by Build) with JetStream, and returns a Cluster
// whose NATS is the comma-separated list of their client URLs.
func NewNATSCluster(tb testing.TB, bin string, n int) (*Cluster, []*NATSNode) {
	tb.Helper()
	return newNATSCluster(tb, bin, n, nil, nil)
}

// EnvRoutePassword holds the route secret of deploy/nats's node files
// (cluster authorization). A test sets it in clear: NewNATSClusterFromConfigs
// writes the route URLs with it.
const EnvRoutePassword = "VMPREP_ROUTE_PASSWORD"

// NewNATSClusterFromConfigs starts node i of a cluster from configuration
// file confs[i] (users, permissions, TLS, route authorization, JetStream
// settings, server_name: a deployment's own files). Only what a test must
// own is changed: the client and monitoring ports come from the command
// line; each node's store_dir is a temporary directory and its cluster
// listen a loopback port (the file is copied, with the other files of its
// directory that it may include, and its one store_dir line and the
// cluster block's one listen line replaced); and routes.conf, which the
// files include for their route URLs, is written with the route secret
// from $VMPREP_ROUTE_PASSWORD. Values the files take from the environment
// (passwords, certificate files) must be set in the test's environment.
func NewNATSClusterFromConfigs(tb testing.TB, bin string, confs []string) (*Cluster, []*NATSNode) {
	tb.Helper()
	ports := FreePorts(tb, 3*len(confs))
	var routes []string
	for i := range confs {
		routes = append(routes, fmt.Sprintf("%q", RouteURL(os.Getenv(EnvRoutePassword), ports[3*i+1])))
	}
	routesConf := "routes: [" + strings.Join(routes, ", ") + "]\n"
	var copies []string
	for ci, conf := range confs {
		dir := tb.TempDir()
		store := filepath.Join(tb.TempDir(), "jetstream")
		siblings, err := filepath.Glob(filepath.Join(filepath.Dir(conf), "*.conf"))
		if err != nil {
			tb.Fatal(err)
		}
		for _, f := range siblings {
			b, err := os.ReadFile(f)
			if err != nil {
				tb.Fatal(err)
			}
			if filepath.Base(f) == filepath.Base(conf) {
				lines := strings.Split(string(b), "\n")
				replaced, listens := 0, 0
				inCluster := false
				for i, l := range lines {
					k, _, ok := strings.Cut(strings.TrimSpace(l), ":")
					switch {
					case strings.HasPrefix(l, "cluster {"):
						inCluster = true
					case l == "}":
						inCluster = false
					case ok && k == "store_dir":
						lines[i] = fmt.Sprintf("  store_dir: %q", store)
						replaced++
					case ok && k == "listen" && inCluster:
						lines[i] = fmt.Sprintf("  listen: 127.0.0.1:%d", ports[3*ci+1])
						listens++
					}
				}
				if replaced != 1 || listens != 1 {
					tb.Fatalf("%s: %d store_dir lines and %d cluster listen lines, want 1 each", conf, replaced, listens)
				}
				b = []byte(strings.Join(lines, "\n"))
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
				tb.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "routes.conf"), []byte(routesConf), 0o600); err != nil {
			tb.Fatal(err)
		}
		copies = append(copies, filepath.Join(dir, filepath.Base(conf)))
	}
	return newNATSCluster(tb, bin, len(confs), copies, ports)
}

// RouteURL is the URL of a route to 127.0.0.1:port that authenticates with
// the route secret (none when secret is empty).
func RouteURL(secret string, port int) string {
	u := url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", port)}
	if secret != "" {
		u.User = url.UserPassword("route", secret)
	}
	return u.String()
}

func newNATSCluster(tb testing.TB, bin string, n int, confs []string, ports []int) (*Cluster, []*NATSNode) {
	c := &Cluster{tb: tb, Bin: bin, Cache: tb.TempDir(), Replicas: n}
	tb.Cleanup(c.StopAll)
	if ports == nil {
		ports = FreePorts(tb, 3*n)
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[3*i+1]))
	}
	var nodes []*NATSNode
	var urls []string
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		args := []string{"-a", "127.0.0.1", "-p", fmt.Sprint(ports[3*i]), "-m", fmt.Sprint(ports[3*i+2])}
		if confs == nil {
			args = append(args, "-n", name, "-js", "-sd", filepath.Join(tb.TempDir(), name), "--cluster_name", "vmprep",
				"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", ports[3*i+1]), "--routes", strings.Join(routes, ","))
		} else {
			// The file's cluster block as it is: --cluster would drop its
			// authorization, --routes its route URLs.
			args = append(args, "-c", confs[i])
		}
		node := &NATSNode{Name: "nats-" + name, URL: fmt.Sprintf("nats://127.0.0.1:%d", ports[3*i]), RoutePort: ports[3*i+1],
			Monitor: fmt.Sprintf("http://127.0.0.1:%d", ports[3*i+2]), args: args, bin: filepath.Join(bin, "nats-server"), c: c}
		if confs == nil {
			node.server = name
		}
		node.Proc = c.startCmd(node.Name, exec.Command(node.bin, args...))
		nodes = append(nodes, node)
		urls = append(urls, node.URL)
	}
	c.NATS = strings.Join(urls, ",")
	WaitFor(tb, "a JetStream meta leader with all peers", 30*time.Second, func() bool { return JetStreamReady(nodes) })
	return c, nodes
}

// JetStreamReady reports whether every node is healthy and the cluster's
// JetStream meta leader sees all peers current.
func JetStreamReady(nodes []*NATSNode) bool {
	for _, n := range nodes {
		if !n.Healthy() {
			return false
		}
		if n.server == "" {
			// a node started from a file: its server_name
			var varz struct {
				Name string `json:"server_name"`
			}
			if err := getJSON(n.Monitor+"/varz", &varz); err != nil || varz.Name == "" {
				return false
			}
			n.server = varz.Name
		}
	}
	type jsz struct {
		Meta *struct {
			Leader  string `json:"leader"`
			Size    int    `json:"cluster_size"`
			Replica []struct {
				Current bool `json:"current"`
			} `json:"replicas"`
		} `json:"meta_cluster"`
	}
	var first jsz
	if err := getJSON(nodes[0].Monitor+"/jsz", &first); err != nil || first.Meta == nil || first.Meta.Leader == "" || first.Meta.Size != len(nodes) {
		return false
	}
	for _, n := range nodes {
		if n.server != first.Meta.Leader {
			continue
		}
		var lead jsz
		if err := getJSON(n.Monitor+"/jsz", &lead); err != nil || lead.Meta == nil || len(lead.Meta.Replica) != len(nodes)-1 {
			return false
		}
		for _, r := range lead.Meta.Replica {
			if !r.Current {
				return false
			}
		}
		return true
	}
	return false
}

// Healthy reports whether the node's /healthz says ok.
func (n *NATSNode) Healthy() bool {
	resp, err := http.Get(n.Monitor + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}
