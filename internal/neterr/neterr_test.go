package neterr

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/vmprep/vmprep/internal/testutil"
)

func TestUnreachable(t *testing.T) {
	// A real lookup, answered "no such name" by a DNS server on loopback.
	dns := testutil.StartNXDomain(t)
	_, lookupErr := dns.Resolver.LookupHost(context.Background(), "mirror.example.test")
	if lookupErr == nil {
		t.Fatal("mirror.example.test resolved")
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"lookup of an unknown name", fmt.Errorf("get: %w", lookupErr), true},
		{"no route to network", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ENETUNREACH)}, true},
		{"no route to host", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, true},
		{"refused", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, false},
		{"DNS timeout", &net.DNSError{Err: "i/o timeout", Name: "x", IsTimeout: true}, false},
		{"DNS server failure", &net.DNSError{Err: "server misbehaving", Name: "x", IsTemporary: true}, false},
		{"other", errors.New("EOF"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Unreachable(tt.err); got != tt.want {
				t.Errorf("Unreachable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
