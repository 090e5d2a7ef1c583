package main

import (
	"os"
	"os/exec"
	"testing"
)

// envRunMain makes the test binary run vmprep itself: tests that need a
// process of their own (a terminal, signals) start it that way.
const envRunMain = "VMPREP_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunMain) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// vmprepCommand is `vmprep args…` as a child process.
func vmprepCommand(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envRunMain+"=1")
	return cmd
}
