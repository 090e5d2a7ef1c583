package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/cli"
)

// opsConn is the connection of the operator commands (status, dead): the
// --nats URL and the credential and TLS flags.
type opsConn struct {
	cli.Connection
	nc *nats.Conn
}

func (o *opsConn) register(fs *flag.FlagSet) { o.RegisterConnection(fs) }

// connect opens the connection; a server that is not there is an error at once.
func (o *opsConn) connect(name string, stderr io.Writer) (jetstream.JetStream, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	nc, err := o.Connect(name, log, false)
	if err != nil {
		return nil, err
	}
	o.nc = nc
	return jetstream.New(nc)
}

// explain adds to err the server's refusal, when the server refused one of
// this connection's JetStream API calls for want of permission: it drops
// such a call without an answer, so err alone is only a timeout.
func (o *opsConn) explain(err error) error {
	refused := cli.PermissionRefusal(o.nc)
	if err == nil || refused == nil {
		return err
	}
	user := o.User
	if user == "" {
		user = "this user"
	}
	why := fmt.Sprintf("the server refused it: %v (%s may not do this: the operator commands need a user like deploy/nats/auth.conf's admin)", refused, user)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// The call was only waiting for an answer the refusal never sends.
		return errors.New(why)
	}
	return fmt.Errorf("%w: %s", err, why)
}

func (o *opsConn) close() {
	if o.nc != nil {
		o.nc.Close()
	}
}

// parseFlags parses fs, reporting whether to go on and the exit code if not.
func parseFlags(fs *flag.FlagSet, args []string) (ok bool, code int) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, 0
		}
		return false, 2
	}
	return true, 0
}

func failf(stderr io.Writer, code int, prefix, format string, a ...any) int {
	fmt.Fprintf(stderr, prefix+": "+format+"\n", a...)
	return code
}
