package stage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrCreateDenied marks a stream, bucket or consumer that is missing and
// that this connection's user may not create. Waiting will not make it
// appear: an operator creates it (vmprep setup, as an admin user).
var ErrCreateDenied = errors.New("this user may not create it: run `vmprep setup` as an admin user")

// Denied reports whether err is the server refusing a publish to apiSubject
// (or to a subject under it) for want of permission.
//
// It reads the error's text because that is all there is: nats-server
// reports the refusal as a "-ERR 'Permissions Violation for Publish to
// "SUBJECT"'" protocol line, and nats.go hands it on as an error wrapping
// ErrPermissionViolation with that line as its text, with no field naming
// the subject. TestDeniedByARealServer pins the wording.
func Denied(err error, apiSubject string) bool {
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

// Create runs create, a JetStream API call through apiSubject that makes
// what (e.g. "stream VMPREP_WORK"), as Call does; a refusal is an error
// wrapping ErrCreateDenied.
func Create(ctx context.Context, nc *nats.Conn, what, apiSubject string, create func(context.Context) error) error {
	denied, err := Call(ctx, nc, apiSubject, create)
	if denied {
		return fmt.Errorf("%s missing and %w", what, ErrCreateDenied)
	}
	return err
}

// Call runs call, a JetStream API request through apiSubject, and reports
// whether the server refused it for want of permission. The server drops
// such a request without answering — the caller would only see its
// timeout — and says why on the connection's asynchronous error: when that
// names apiSubject, call's context is ended at once.
func Call(ctx context.Context, nc *nats.Conn, apiSubject string, call func(context.Context) error) (denied bool, err error) {
	ctx, cancel, deniedNow := untilDenied(ctx, nc, apiSubject)
	defer cancel()
	err = call(ctx)
	return err != nil && deniedNow(), err
}

// UntilDenied returns a context that ends with ctx, or as soon as the
// server refuses one of nc's publishes for want of permission after this
// call: to apiSubject (or under it), or to anything when apiSubject is "".
// For callers that make several calls a permission may refuse (vmprep
// status, dead, prepare --nats): each would wait out its timeout, the
// JetStream API's 5 s, before anyone heard why.
func UntilDenied(ctx context.Context, nc *nats.Conn, apiSubject string) (context.Context, context.CancelFunc) {
	ctx, cancel, _ := untilDenied(ctx, nc, apiSubject)
	return ctx, cancel
}

// untilDenied is UntilDenied, also returning whether a refusal has come.
func untilDenied(ctx context.Context, nc *nats.Conn, apiSubject string) (context.Context, context.CancelFunc, func() bool) {
	ctx, cancel := context.WithCancel(ctx)
	if nc == nil {
		return ctx, cancel, func() bool { return false }
	}
	before := nc.LastError()
	deniedNow := func() bool {
		err := nc.LastError()
		if identical(err, before) {
			return false
		}
		if apiSubject == "" {
			return err != nil && errors.Is(err, nats.ErrPermissionViolation)
		}
		return Denied(err, apiSubject)
	}
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if deniedNow() {
					cancel()
					return
				}
			}
		}
	}()
	return ctx, cancel, deniedNow
}

// identical reports whether a and b are the same error value (an error of
// an incomparable type is never identical to another).
func identical(a, b error) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}
