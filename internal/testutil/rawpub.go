package testutil

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// RawPublish publishes data on subject over the bare client protocol, as
// user (none when user is ""), with header block hdr exactly as given —
// nats.go would clean a header block (no blank line inside), the server
// does not look — and returns once the server has read it (its PONG).
func RawPublish(tb testing.TB, serverURL, user, password, subject, hdr string, data []byte) {
	tb.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // INFO
		tb.Fatal(err)
	}
	opts := map[string]any{"headers": true, "verbose": false, "pedantic": false, "protocol": 1}
	if user != "" {
		opts["user"], opts["pass"] = user, password
	}
	connect, err := json.Marshal(opts)
	if err != nil {
		tb.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s\r\nHPUB %s %d %d\r\n%s%s\r\nPING\r\n", connect, subject, len(hdr), len(hdr)+len(data), hdr, data)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			tb.Fatalf("raw publish on %s as %q: %v", subject, user, err)
		}
		if strings.HasPrefix(line, "-ERR") {
			tb.Fatalf("raw publish on %s as %q: %s", subject, user, line)
		}
		if strings.HasPrefix(line, "PONG") {
			return
		}
	}
}
