package main

import (
	"strings"
	"testing"
)

// vmprep setup refuses bad input before connecting, naming the flag and
// why; an unreachable server is an error at once, without the URL's secret.
// (internal/e2e's TestDeployPermissions runs setup against a cluster.)
func TestSetupRefusals(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"--replicas", "0"}, 2, "--replicas 0: want 1 to 5"},
		{[]string{"--store", "s3:x"}, 2, `--store "s3:x"`},
		{[]string{"--ack-wait", "0s"}, 2, "--ack-wait 0s"},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--user", "admin"}, 1, "--user needs --password-file"},
		{[]string{"--nats", "nats://admin:hunter2@127.0.0.1:1"}, 1, "connect to NATS at nats://REDACTED@127.0.0.1:1"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(append([]string{"setup"}, tc.args...), &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.says) || strings.Contains(stderr.String(), "hunter2") {
				t.Errorf("exit %d, stderr %q; want exit %d saying %q", code, stderr.String(), tc.code, tc.says)
			}
		})
	}
}
