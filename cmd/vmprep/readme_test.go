package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/image"
)

// natsCLIVersion is the nats CLI the README's recipe is checked with.
const natsCLIVersion = "v0.5.0"

// readmeBlock returns the first fenced block of lang in README.md after
// the line containing marker.
func readmeBlock(t *testing.T, marker, lang string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), marker)
	if !ok {
		t.Fatalf("README.md has no %q", marker)
	}
	_, block, ok := strings.Cut(after, "```"+lang+"\n")
	if !ok {
		t.Fatalf("README.md has no ```%s block after %q", lang, marker)
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatalf("README.md: the ```%s block after %q does not end", lang, marker)
	}
	return block
}

// natsCLI builds the nats CLI from the Go module proxy, once per machine
// (kept in the user cache directory). Where it cannot be built the test is
// skipped, saying why — except in CI (CI=true), whose Go module proxy
// serves it: there, a failure is a failure.
func natsCLI(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "vmprep-test", "natscli-"+natsCLIVersion)
	bin := filepath.Join(dir, "nats")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/nats-io/natscli/nats@"+natsCLIVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := "cannot build the nats CLI (go install github.com/nats-io/natscli/nats@" + natsCLIVersion + "): " + err.Error() + "\n" + string(out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// TestReadmeNatsCLIRecipe runs the README's nats CLI recipe as written
// against vmprep serve with a local mirror: the one result arrives, prepared.
func TestReadmeNatsCLIRecipe(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the nats CLI")
	}
	nats := natsCLI(t)
	script := readmeBlock(t, "With the `nats` CLI", "sh")
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64, image.ArchARM64))
	url := startServe(t, "--listen", "127.0.0.1:0", "--mirror", m.URL, "--keyring", m.KeyringFile()).url(t)

	// Once cold, then warm: a warm deployment answers before a subscriber
	// started in the background is ready (the recipe once missed 2 of 6).
	// A nats on PATH whose `sub` starts a second late, as on a loaded
	// machine: the recipe must not depend on who starts first.
	shim := t.TempDir()
	shimScript := "#!/bin/sh\nif [ \"$1\" = sub ]; then sleep 1; fi\nexec " + nats + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(shim, "nats"), []byte(shimScript), 0o755); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir() // no nats contexts of the user's
	for run := range 6 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
		cmd.Env = append(os.Environ(), "PATH="+shim+string(os.PathListSeparator)+os.Getenv("PATH"),
			"NATS_URL="+url, "HOME="+home)
		// A background nats left running keeps the output open: give up on
		// it soon after the deadline instead of hanging the package.
		cmd.WaitDelay = 10 * time.Second
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("run %d: the recipe failed: %v\n%s", run, err, out)
		}
		if !strings.Contains(string(out), `"status":"prepared"`) || !strings.Contains(string(out), `"disk":"`) {
			t.Fatalf("run %d: the recipe's output has no prepared result:\n%s", run, out)
		}
	}
}

// TestReadmePythonRecipe runs the README's Python recipe against vmprep
// serve with a local mirror where nats-py is installed; it is skipped
// elsewhere (this project's machines cannot install it: no PyPI).
func TestReadmePythonRecipe(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	if out, err := exec.Command(python, "-c", "import nats").CombinedOutput(); err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Skipf("nats-py is not installed (pip install nats-py): %s", lines[len(lines)-1])
	}
	script := readmeBlock(t, "### From Python (nats-py)", "python")
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64, image.ArchARM64))
	url := startServe(t, "--listen", "127.0.0.1:0", "--mirror", m.URL, "--keyring", m.KeyringFile()).url(t)
	script = strings.Replace(script, "nats://127.0.0.1:4222", url, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", script).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if err != nil || !strings.HasPrefix(string(out), "prepared ") {
		t.Errorf("the recipe: %v\n%s", err, out)
	}
}
