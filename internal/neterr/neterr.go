// Package neterr tells network failures that pass in a moment (a dropped
// connection, a busy server) from those that say this host cannot reach the
// other at all right now: its name does not resolve, or there is no route.
// Retrying the second kind within seconds only makes a person wait; whoever
// paces retries over minutes (a stage runner's redeliveries) may still retry.
package neterr

import (
	"errors"
	"net"
	"syscall"
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
