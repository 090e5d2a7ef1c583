// Package natsembed runs a nats-server with JetStream inside this process: for
// the single-binary mode (vmprep prepare without --nats), for vmprep serve, and
// for tests, which always use a real server.
package natsembed

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options configures an embedded server.
type Options struct {
	// StoreDir holds JetStream file storage. Required.
	StoreDir string
	// Listen is "host:port" to accept network clients; empty means no listener
	// (clients connect in-process only).
	Listen string
	// ServerName names the server (default "vmprep").
	ServerName string
	// SyncAlways fsyncs every JetStream write (survives an OS crash; slower).
	SyncAlways bool
	// ReadyTimeout bounds start-up (default 10s).
	ReadyTimeout time.Duration
	// Config is the base server configuration (see LoadConfig): users,
	// accounts, TLS, cluster. StoreDir and Listen, when set, override its
	// JetStream directory and client listener; JetStream is always on.
	Config *server.Options
}

// Server is a running embedded nats-server.
type Server struct {
	srv    *server.Server
	inProc bool
}

// Start starts a server and waits until it accepts connections.
func Start(o Options) (*Server, error) {
	so := &server.Options{}
	if o.Config != nil {
		so = o.Config.Clone()
	}
	if o.StoreDir != "" {
		so.StoreDir = o.StoreDir
	}
	if so.StoreDir == "" {
		return nil, errors.New("natsembed: StoreDir is required")
	}
	if o.ServerName != "" || so.ServerName == "" {
		so.ServerName = o.ServerName
		if so.ServerName == "" {
			so.ServerName = "vmprep"
		}
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	so.JetStream = true
	so.NoSigs, so.NoLog = true, true
	so.SyncAlways = so.SyncAlways || o.SyncAlways
	switch {
	case o.Listen == "" && o.Config == nil:
		so.DontListen = true
	case o.Listen == "":
		// The configuration's listener; with none, nats-server's default port.
	default:
		host, portStr, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("natsembed: listen address %q: %w", o.Listen, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, fmt.Errorf("natsembed: listen port %q: %w", portStr, err)
		}
		so.Host, so.Port = host, port
		if port == 0 {
			so.Port = server.RANDOM_PORT
		}
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("natsembed: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(o.ReadyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("natsembed: server not ready within %s", o.ReadyTimeout)
	}
	return &Server{srv: srv, inProc: so.DontListen}, nil
}

// ClientURL is the URL network clients use ("" when the server does not listen).
func (s *Server) ClientURL() string {
	if s.inProc {
		return ""
	}
	return s.srv.ClientURL()
}

// Connect returns an in-process client connection: no network and no TLS
// (the server does not ask it of in-process clients), but the server's
// authentication applies, so opts carry the credentials it needs.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond), nats.InProcessServer(s.srv)}
	// No URL: the connection is in-process whatever the listener's scheme
	// (tls:// would make the client insist on TLS over the in-process pipe).
	nc, err := nats.Connect("", append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("natsembed: connect: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server and waits for it to finish.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// LoadConfig reads a nats-server configuration file with the server's own
// parser (includes, $VARIABLES from the environment, accounts, TLS, cluster).
func LoadConfig(path string) (*server.Options, error) {
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("nats-server configuration %s: %w", path, err)
	}
	return o, nil
}

// ClientAuth names how clients must authenticate to a server with options
// o, or returns "" when anyone who reaches its client port may connect (no
// users, or a no_auth_user that anonymous clients become).
func ClientAuth(o *server.Options) string {
	if o == nil {
		return ""
	}
	if o.NoAuthUser != "" {
		return ""
	}
	// A user whose password is empty (a "" in the file, or a $VARIABLE set
	// to nothing) lets in whoever names it: nats-server compares the empty
	// password with the client's empty one. Only certificates mapped to
	// users (verify_and_map) make a password unnecessary.
	if !o.TLSMap {
		if o.Username != "" && o.Password == "" {
			return ""
		}
		for _, u := range o.Users {
			if u.Password == "" {
				return ""
			}
		}
	}
	switch {
	case len(o.TrustedOperators) > 0 || len(o.TrustedKeys) > 0:
		return "operator JWTs"
	case len(o.Users) > 0 || o.Username != "":
		return "user passwords"
	case len(o.Nkeys) > 0:
		return "NKeys"
	case o.Authorization != "":
		return "a token"
	case o.TLSVerify:
		return "client certificates"
	case o.AuthCallout != nil:
		return "auth callout"
	case o.CustomClientAuthentication != nil:
		return "custom authentication"
	}
	return ""
}

// Loopback reports whether a listener on host accepts connections from this
// machine only: "localhost" or a loopback address. An empty host, like
// 0.0.0.0, listens on every interface.
func Loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// Running reports whether the server is running.
func (s *Server) Running() bool { return s.srv.Running() }

// Subscriptions is the number of subscriptions the server holds: a test
// sees a client get to the point where it waits for an answer.
func (s *Server) Subscriptions() uint32 { return s.srv.NumSubscriptions() }

// Listener is one network listener a server configuration opens, and how
// whoever reaches it must authenticate ("" when anyone may connect).
type Listener struct {
	// Kind is client, websocket, mqtt, leafnode, cluster, gateway,
	// monitoring or profiling.
	Kind string
	Host string
	Port int
	Auth string
}

// Listeners are the network listeners of a server with options o whose
// client listener is on clientHost (the host --listen gives, or the
// file's): every port someone on the network could reach, each with the
// authentication it requires. A websocket, MQTT or leafnode listener
// without authentication of its own takes the clients' users; a route,
// gateway, monitoring or profiling listener never does (the monitoring and
// profiling ports have no authentication at all).
func Listeners(o *server.Options, clientHost string) []Listener {
	ls := []Listener{{Kind: "client", Host: clientHost, Port: o.Port, Auth: ClientAuth(o)}}
	own := func(user, token, noAuth string) string {
		switch {
		case noAuth != "":
			return ""
		case user != "":
			return "a user password"
		case token != "":
			return "a token"
		}
		return ClientAuth(o)
	}
	if o.Websocket.Port != 0 {
		ls = append(ls, Listener{"websocket", o.Websocket.Host, o.Websocket.Port, own(o.Websocket.Username, o.Websocket.Token, o.Websocket.NoAuthUser)})
	}
	if o.MQTT.Port != 0 {
		ls = append(ls, Listener{"mqtt", o.MQTT.Host, o.MQTT.Port, own(o.MQTT.Username, o.MQTT.Token, o.MQTT.NoAuthUser)})
	}
	if o.LeafNode.Port != 0 {
		auth := own(o.LeafNode.Username, "", "")
		if o.LeafNode.Nkey != "" || len(o.LeafNode.Users) > 0 {
			auth = "leafnode users"
		}
		ls = append(ls, Listener{"leafnode", o.LeafNode.Host, o.LeafNode.Port, auth})
	}
	// A route or gateway authenticates with the block's user (nats-server
	// accepts one only), or with a certificate the block's tls verifies.
	peerAuth := func(user string, tc *tls.Config) string {
		switch {
		case user != "":
			return "a password"
		case tc != nil && tc.ClientAuth == tls.RequireAndVerifyClientCert:
			return "verified certificates"
		}
		return ""
	}
	if o.Cluster.Port != 0 {
		ls = append(ls, Listener{"cluster", o.Cluster.Host, o.Cluster.Port, peerAuth(o.Cluster.Username, o.Cluster.TLSConfig)})
	}
	if o.Gateway.Port != 0 {
		ls = append(ls, Listener{"gateway", o.Gateway.Host, o.Gateway.Port, peerAuth(o.Gateway.Username, o.Gateway.TLSConfig)})
	}
	// nats-server puts the monitoring and profiling ports on the client
	// listener's host unless told otherwise.
	httpHost := o.HTTPHost
	if httpHost == "" {
		httpHost = clientHost
	}
	for _, p := range []int{o.HTTPPort, o.HTTPSPort} {
		if p != 0 {
			ls = append(ls, Listener{"monitoring", httpHost, p, ""})
		}
	}
	if o.ProfPort != 0 {
		ls = append(ls, Listener{"profiling", clientHost, o.ProfPort, ""})
	}
	return ls
}
