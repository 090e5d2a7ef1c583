// Package neterr tells network failures that pass in a moment (a dropped
// connection, a busy server) from those that say this host cannot reach the
// other at all right now: its name does not resolve, or there is no route.
// Retrying the second kind within seconds only makes a person wait; whoever
// paces retries over minutes (a stage runner's redeliveries) may still retry.
package neterr

import (
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Unreachable reports whether err says the host cannot be reached at all:
// its name does not resolve ("no such host": offline, or a wrong name) or
// the network or host has no route. A DNS timeout or a server failure is
// not included: those pass.
func Unreachable(err error) bool {
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.IsNotFound && !dns.IsTimeout
	}
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)
}

// RetryAfter reads an HTTP Retry-After value, delay-seconds or an
// HTTP-date, as a wait from now; 0 if absent or invalid. It is clamped to a
// day: a hostile value must not overflow or park a caller for ever.
func RetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		// Clamp before multiplying: a huge value must not overflow.
		return time.Duration(min(secs, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
