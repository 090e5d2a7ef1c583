package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/testutil"
)

// deployTLS sets what deploy/nats's files take from the environment besides
// the users' passwords: the certificate files of their tls blocks (a CA made
// for the test; the server certificate names 127.0.0.1) and the route secret,
// in clear (cluster.NewNATSClusterFromConfigs writes the route URLs with it).
// NATS_CA is set too, so every vmprep process the test starts trusts the CA.
// It returns the CA, for issuing more certificates.
func deployTLS(t *testing.T) *testutil.CA {
	t.Helper()
	ca := testutil.NewCA(t)
	cert, key := ca.Issue("nats")
	for k, v := range map[string]string{
		"VMPREP_TLS_CERT": cert, "VMPREP_TLS_KEY": key, "VMPREP_TLS_CA": ca.CertFile,
		"NATS_CA":                ca.CertFile,
		cluster.EnvRoutePassword: "route-pw-" + fmt.Sprint(time.Now().UnixNano()),
	} {
		t.Setenv(k, v)
	}
	return ca
}

// deployCA is the nats.go option that trusts deployTLS's CA.
func deployCA() nats.Option { return nats.RootCAs(os.Getenv("NATS_CA")) }

// TestDeployRoutes: the route port of deploy/nats's nodes lets in only
// servers with the deployment's certificate and the route secret. A route
// is a server of the cluster, which sees every message and answers to no
// permission; without authentication any nats-server that reached port
// 6222 read alice's requests and wrote results. Each rogue below (with the
// deployment's certificate, the worst case of a leaked key, but no secret
// or a wrong one; with the secret but no certificate) dials a node as a
// route, is refused, never shows in the node's /routez and sees nothing
// of a message published on the cluster. A server with both joins and sees
// it: the control that shows the probe would see a leak.
func TestDeployRoutes(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	passwords, _ := deployPasswords(t)
	var confs []string
	for i := 1; i <= 3; i++ {
		confs = append(confs, filepath.Join("..", "..", "deploy", "nats", fmt.Sprintf("node%d.conf", i)))
	}
	c, nodes := cluster.NewNATSClusterFromConfigs(t, cluster.Build(t), confs)
	admin, err := nats.Connect(c.NATS, nats.UserInfo("admin", passwords["admin"]), nats.CustomInboxPrefix("_INBOX_admin"), deployCA())
	if err != nil {
		t.Fatalf("admin over TLS: %v", err)
	}
	defer admin.Close()
	// A client in clear is refused: the nodes require TLS.
	if nc, err := nats.Connect(nodes[0].URL, nats.UserInfo("admin", passwords["admin"]), nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Error("a client without the CA (TLS unverifiable) connected")
	}

	certFile, keyFile := os.Getenv("VMPREP_TLS_CERT"), os.Getenv("VMPREP_TLS_KEY")
	tlsBlock := fmt.Sprintf("tls { cert_file: %q, key_file: %q, ca_file: %q }", certFile, keyFile, os.Getenv("VMPREP_TLS_CA"))
	secret := os.Getenv(cluster.EnvRoutePassword)
	rogues := []struct {
		name   string
		secret string
		tls    bool
		joins  bool
	}{
		{"no secret", "", true, false},
		{"wrong secret", "not-" + secret, true, false},
		{"no certificate", secret, false, false},
		{"secret and certificate", secret, true, true},
	}
	target := nodes[0]
	for i, r := range rogues {
		t.Run(r.name, func(t *testing.T) {
			name := fmt.Sprintf("rogue%d", i)
			ports := cluster.FreePorts(t, 3)
			clientPort, monitorPort, routePort := ports[0], ports[1], ports[2]
			block := ""
			if r.tls {
				block = tlsBlock
			}
			conf := filepath.Join(t.TempDir(), "rogue.conf")
			body := fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\ncluster {\n  name: vmprep\n  listen: 127.0.0.1:%d\n  %s\n  routes: [%q]\n}\n",
				name, clientPort, monitorPort, routePort, block, cluster.RouteURL(r.secret, target.RoutePort))
			if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			before := strings.Count(target.Proc.Output(), "authentication error") + strings.Count(target.Proc.Output(), "TLS route handshake error")
			rogue := c.Start("nats-server#"+name, "-c", conf)
			defer func() {
				_ = rogue.Cmd.Process.Kill()
				_, _ = rogue.Wait(10 * time.Second)
			}()
			var spy *nats.Conn
			cluster.WaitFor(t, "the rogue's client port", 30*time.Second, func() bool {
				spy, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", clientPort))
				return err == nil
			})
			defer spy.Close()
			seen, err := spy.SubscribeSync(">")
			if err != nil {
				t.Fatal(err)
			}
			if err := spy.Flush(); err != nil {
				t.Fatal(err)
			}
			if r.joins {
				cluster.WaitFor(t, "the rogue as a route of "+target.Name, 30*time.Second, func() bool { return routeNamed(t, target, name) })
				// Its interest in ">" travels to the cluster once it has joined.
				time.Sleep(time.Second)
			} else {
				// Refused, or (the flaw this test guards against) joined.
				cluster.WaitFor(t, target.Name+" to refuse the rogue", 30*time.Second, func() bool {
					out := target.Proc.Output()
					return strings.Count(out, "authentication error")+strings.Count(out, "TLS route handshake error") > before ||
						routeNamed(t, target, name)
				})
				time.Sleep(time.Second)
			}
			subject := "vmprep.progress.alice.probe-" + name
			if err := admin.Publish(subject, []byte("alice's request")); err != nil {
				t.Fatal(err)
			}
			if err := admin.Flush(); err != nil {
				t.Fatal(err)
			}
			m, err := seen.NextMsg(3 * time.Second)
			switch {
			case r.joins && err != nil:
				t.Fatalf("the control server with the secret and certificate saw nothing (%v): the probe would miss a leak", err)
			case !r.joins && err == nil:
				t.Fatalf("a rogue server (%s) received %q on %s", r.name, m.Data, m.Subject)
			}
			if !r.joins && routeNamed(t, target, name) {
				t.Errorf("%s lists the rogue (%s) as a route", target.Name, r.name)
			}
		})
	}
}

// routeNamed reports whether node's /routez lists a route to server name.
func routeNamed(t *testing.T, node *cluster.NATSNode, name string) bool {
	t.Helper()
	code, body := testutil.Get(t, node.Monitor+"/routez")
	if code != http.StatusOK {
		t.Fatalf("%s/routez: %d %s", node.Monitor, code, body)
	}
	return strings.Contains(body, fmt.Sprintf("%q", name))
}
