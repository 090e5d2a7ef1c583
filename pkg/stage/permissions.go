package stage

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// ErrCreateDenied marks a stream, bucket or consumer that is missing and
// that this connection's user may not create. Waiting will not make it
// appear: an operator creates it (vmprep setup, as an admin user).
var ErrCreateDenied = errors.New("this user may not create it: run `vmprep setup` as an admin user")

// Denied reports whether the server refused nc a publish to apiSubject (or
// to a subject under it): the last error the server sent nc is a permissions
// violation naming it. The server drops a denied JetStream API request
// without answering, so the caller sees a timeout; the reason arrives only
// as the connection's asynchronous error, checked here.
func Denied(nc *nats.Conn, apiSubject string) bool {
	if nc == nil {
		return false
	}
	err := nc.LastError()
	if err == nil || !errors.Is(err, nats.ErrPermissionViolation) {
		return false
	}
	msg := strings.ToLower(err.Error())
	want := strings.ToLower(`publish to "` + apiSubject)
	i := strings.Index(msg, want)
	if i < 0 {
		return false
	}
	rest := msg[i+len(want):]
	return strings.HasPrefix(rest, `"`) || strings.HasPrefix(rest, ".")
}

// CreateDenied turns err, from creating what (e.g. "stream VMPREP_WORK")
// through apiSubject, into an ErrCreateDenied error if the server refused
// the request for want of permission; else it returns err unchanged.
func CreateDenied(nc *nats.Conn, err error, what, apiSubject string) error {
	if err != nil && Denied(nc, apiSubject) {
		return fmt.Errorf("%s missing and %w", what, ErrCreateDenied)
	}
	return err
}
