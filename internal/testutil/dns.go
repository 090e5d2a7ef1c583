package testutil

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
)

// NXDomain is a DNS server on loopback that answers every query "no such
// name" (NXDOMAIN), and a resolver that asks it: a name lookup that fails
// the way it does offline or for a wrong host name, without the network.
type NXDomain struct {
	// Resolver asks only this server.
	Resolver *net.Resolver
	queries  atomic.Int64
}

// Queries counts the queries answered so far.
func (d *NXDomain) Queries() int64 { return d.queries.Load() }

// Dialer returns a dialer whose lookups go to this server.
func (d *NXDomain) Dialer() *net.Dialer { return &net.Dialer{Resolver: d.Resolver} }

// StartNXDomain starts the server; it stops when the test ends.
func StartNXDomain(tb testing.TB) *NXDomain {
	tb.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	d := &NXDomain{}
	addr := conn.LocalAddr().String()
	d.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, "udp", addr)
	}}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply := nxdomainReply(buf[:n]); reply != nil {
				d.queries.Add(1)
				_, _ = conn.WriteTo(reply, from)
			}
		}
	}()
	return d
}

// nxdomainReply answers query with its ID and question and RCODE 3, or
// returns nil for anything that is not a one-question query.
func nxdomainReply(q []byte) []byte {
	if len(q) < 12 || q[2]&0x80 != 0 || q[4] != 0 || q[5] != 1 {
		return nil
	}
	end := 12
	for end < len(q) && q[end] != 0 { // the name's labels
		end += 1 + int(q[end])
	}
	end += 1 + 4 // the root label, type and class
	if end > len(q) {
		return nil
	}
	r := make([]byte, end)
	copy(r, q[:end])
	r[2] = 0x80 | q[2]&0x01 // a response; recursion desired as asked
	r[3] = 0x80 | 3         // recursion available; NXDOMAIN
	r[6], r[7], r[8], r[9], r[10], r[11] = 0, 0, 0, 0, 0, 0
	return r
}
