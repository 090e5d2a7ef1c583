package main

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
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

// TestVersion: `vmprep version` and `vmprep --version` name the build and
// the toolchain (they printed "vmprep dev" alone).
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out, errOut strings.Builder
		if code := run(args, &out, &errOut); code != 0 {
			t.Fatalf("vmprep %v: exit %d: %s", args, code, errOut.String())
		}
		if !strings.HasPrefix(out.String(), "vmprep ") || !strings.Contains(out.String(), "go "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH) {
			t.Errorf("vmprep %v printed %q", args, out.String())
		}
	}
}
