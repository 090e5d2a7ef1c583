// Package natsembed runs a nats-server with JetStream inside this process: for
// the single-binary mode (vmprep prepare without --nats), for vmprep serve, and
// for tests, which always use a real server.
package natsembed

import (
	"errors"
	"fmt"
	"net"
	"strconv"
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
}

// Server is a running embedded nats-server.
type Server struct {
	srv    *server.Server
	inProc bool
}

// Start starts a server and waits until it accepts connections.
func Start(o Options) (*Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("natsembed: StoreDir is required")
	}
	if o.ServerName == "" {
		o.ServerName = "vmprep"
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	so := &server.Options{
		ServerName: o.ServerName,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		SyncAlways: o.SyncAlways,
	}
	if o.Listen == "" {
		so.DontListen = true
	} else {
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

// Connect returns a client connection (in-process when there is no listener).
// It reconnects forever, since the server may restart under a long request.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}
	if s.inProc {
		base = append(base, nats.InProcessServer(s.srv))
	}
	nc, err := nats.Connect(s.ClientURL(), append(base, opts...)...)
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
