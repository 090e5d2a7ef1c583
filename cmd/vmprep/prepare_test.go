package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

func TestPrepareCommand(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchARM64))
	cache := t.TempDir()
	base := []string{"prepare", "--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile()}

	var stdout, stderr bytes.Buffer
	code := run(append(base, "--json", "--arch", "aarch64", "--format", "raw", "ubuntu", "24.04"), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, stderr.String())
	}
	var out map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout.String())
	}
	for _, k := range []string{"kernel", "initramfs", "disk"} {
		p, _ := out[k].(string)
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s = %q: %v", k, p, err)
		}
	}
	if out["disk_format"] != "raw" {
		t.Errorf("disk_format = %v, want raw", out["disk_format"])
	}
	// A converted file has derived_from and no digest; a file as published
	// has digest and no derived_from: empty fields are left out, not "".
	files, _ := out["files"].(map[string]any)
	disk, _ := files["disk"].(map[string]any)
	initramfs, _ := files["initramfs"].(map[string]any)
	if _, has := disk["digest"]; has || disk["derived_from"] == nil {
		t.Errorf("--json files.disk = %v: want derived_from and no digest", disk)
	}
	if _, has := initramfs["derived_from"]; has || initramfs["digest"] == nil {
		t.Errorf("--json files.initramfs = %v: want digest and no derived_from", initramfs)
	}

	// Flags after the positional arguments work too; plain output names each file.
	stdout.Reset()
	stderr.Reset()
	if code := run(append(base, "ubuntu", "24.04", "--arch", "arm64", "--format", "qcow2"), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, stderr.String())
	}
	for _, want := range []string{"kernel:", "initramfs:", "disk:", "(qcow2)", m.Fingerprint()} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"alpine", []string{"alpine", "3.20"}, 1, "alpine"},
		{"unknown distro", []string{"plan9", "4"}, 1, "ubuntu"},
		{"traversal", []string{"ubuntu", "../../etc"}, 2, "version"},
		{"bad arch", []string{"--arch", "sparc", "ubuntu", "24.04"}, 2, "sparc"},
		{"bad format", []string{"--format", "vmdk", "ubuntu", "24.04"}, 2, "vmdk"},
		{"missing version", []string{"ubuntu"}, 2, "DISTRO VERSION"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append(append([]string{}, base...), tt.args...), &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.wantCode, stderr.String())
			}
			msg := strings.TrimSpace(stderr.String())
			if strings.Count(msg, "\n") != 0 && tt.wantCode == 1 {
				t.Errorf("want one line on stderr, got:\n%s", msg)
			}
			if !strings.Contains(strings.ToLower(msg), strings.ToLower(tt.wantErr)) {
				t.Errorf("stderr %q does not mention %q", msg, tt.wantErr)
			}
		})
	}
}

// TestPrepareFlagsFromEnvironment: --concurrency and --log-level read the
// same environment variables as the stage processes.
func TestPrepareFlagsFromEnvironment(t *testing.T) {
	t.Setenv("VMPREP_CONCURRENCY", "7")
	t.Setenv("VMPREP_LOG_LEVEL", "warn")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"prepare", "--help"}, &stdout, &stderr); code != 0 {
		t.Fatalf("prepare --help: exit %d", code)
	}
	help := stderr.String()
	for _, want := range []string{"env VMPREP_CONCURRENCY) (default 7)", "env VMPREP_LOG_LEVEL) (default \"warn\")"} {
		if !strings.Contains(help, want) {
			t.Errorf("prepare --help lacks %q:\n%s", want, help)
		}
	}
	// A bad value from the environment is refused like a bad flag.
	t.Setenv("VMPREP_LOG_LEVEL", "chatty")
	stderr.Reset()
	if code := run([]string{"prepare", "--cache-dir", t.TempDir(), "ubuntu", "24.04"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "chatty") {
		t.Errorf("VMPREP_LOG_LEVEL=chatty: exit %d, stderr %q; want 2 naming the value", code, stderr.String())
	}
}

// TestWarmPrepareStartsNoServer (issue 11, item 14): a warm prepare is
// answered from the store — no embedded server starts (its JetStream
// directory is not even created) — with the result a run through the
// stages prints; --request-id goes through the stages (the deployment
// keeps what an id was used for), and so does a resolution too old for
// --resolution-max-age.
func TestWarmPrepareStartsNoServer(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	cache := t.TempDir()
	base := []string{"prepare", "--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "amd64", "--format", "raw", "--json"}
	prep := func(extra ...string) map[string]any {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if code := run(append(append(append([]string{}, base...), extra...), "ubuntu", "24.04"), &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		var out map[string]any
		if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		delete(out, "request_id")
		delete(out, "completed_at")
		return out
	}
	prep() // cold
	js := filepath.Join(cache, "jetstream")
	if err := os.RemoveAll(js); err != nil {
		t.Fatal(err)
	}
	warm := prep()
	if _, err := os.Stat(js); !os.IsNotExist(err) {
		t.Fatalf("a warm prepare started the embedded server (%s exists: %v)", js, err)
	}
	viaStages := prep("--request-id", "through-the-stages")
	if _, err := os.Stat(js); err != nil {
		t.Fatalf("--request-id did not go through the embedded server: %v", err)
	}
	w, _ := json.Marshal(warm)
	s, _ := json.Marshal(viaStages)
	if string(w) != string(s) || warm["resolved_from"] != "cache" {
		t.Errorf("warm answer differs from the stages':\n%s\n%s", w, s)
	}
	if err := os.RemoveAll(js); err != nil {
		t.Fatal(err)
	}
	prep("--resolution-max-age", "1ns")
	if _, err := os.Stat(js); err != nil {
		t.Errorf("a stale resolution did not go through the stages (and the network): %v", err)
	}
}

// A targeted result's paths are on another host: the text output names it
// before them; an untargeted one (paths here) has no host line.
func TestPrintResultNamesTargetHost(t *testing.T) {
	for _, tc := range []struct {
		name     string
		res      messages.Result
		wantHost string // "" when no host line is wanted
	}{
		{"targeted", messages.Result{Target: "host1", Host: "host1", Disk: "/var/cache/vmprep/d", DiskFormat: "raw"}, "host:       host1 (the paths below are on that host)\n"},
		{"local", messages.Result{Host: "laptop", Disk: "/home/a/d", DiskFormat: "qcow2"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			printResult(&b, tc.res)
			out := b.String()
			if tc.wantHost == "" {
				if strings.Contains(out, "host:") {
					t.Errorf("output names a host:\n%s", out)
				}
				return
			}
			if !strings.HasPrefix(out, tc.wantHost) {
				t.Errorf("output does not start with %q:\n%s", tc.wantHost, out)
			}
		})
	}
}

// A deployment's request is named as vmprep status takes it.
func TestRequestLine(t *testing.T) {
	for _, tc := range []struct {
		res  messages.Result
		want string
	}{
		{messages.Result{Namespace: "alice", RequestID: "abc"}, "request:    alice.abc (for the operator: vmprep status alice.abc)\n"},
		{messages.Result{RequestID: "abc"}, "request:    abc (vmprep status abc)\n"},
	} {
		if got := requestLine(tc.res); got != tc.want {
			t.Errorf("requestLine(%+v) = %q, want %q", tc.res, got, tc.want)
		}
	}
}

// TestPrepareCacheBoundToTrustRoots (issue 15, item 11): after a prepare
// against a test mirror with its throwaway key, a prepare with the built-in
// Ubuntu keys is not answered from the cache: against that mirror it
// re-resolves and the throwaway key's signature fails; offline (another
// mirror, unreachable) it fails saying the cached build was resolved under
// other trust roots. The same mirror and keyring are still answered warm,
// without the server or the network.
func TestPrepareCacheBoundToTrustRoots(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(4<<20, 256<<10), testmirror.WithKernelSize(8<<10, 8<<10))
	cache := t.TempDir()
	js := filepath.Join(cache, "jetstream")
	prep := func(wantOK bool, args ...string) (map[string]any, string) {
		t.Helper()
		if err := os.RemoveAll(js); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		code := run(append(append([]string{"prepare", "--cache-dir", cache, "--arch", "amd64", "--json", "--resolution-max-age", "1h"}, args...), "ubuntu", "24.04"), &stdout, &stderr)
		if (code == 0) != wantOK {
			t.Fatalf("vmprep prepare %s: exit %d: %s\n%s", strings.Join(args, " "), code, stderr.String(), stdout.String())
		}
		var out map[string]any
		if wantOK {
			if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
				t.Fatal(err)
			}
		}
		return out, stdout.String() + stderr.String()
	}
	throwaway := []string{"--mirror", m.URL, "--keyring", m.KeyringFile()}
	if out, _ := prep(true, throwaway...); out["signer"] != m.Fingerprint() {
		t.Fatalf("signer %v, want the test mirror's key", out["signer"])
	}

	// The built-in Ubuntu keys, the same mirror: resolved again and refused.
	_, msg := prep(false, "--mirror", m.URL)
	if _, err := os.Stat(js); err != nil {
		t.Errorf("answered without the stages under the built-in keys: %v", err)
	}
	if !strings.Contains(msg, "signature") && !strings.Contains(msg, "key") {
		t.Errorf("failure says nothing of the signature:\n%s", msg)
	}
	// The built-in keys and another mirror, unreachable: fails saying why.
	_, msg = prep(false, "--mirror", "http://127.0.0.1:1/")
	for _, want := range []string{"the cached build of ubuntu 24.04 amd64", "resolved under other trust roots", "keyring " + m.Fingerprint(), "mirror " + m.URL + " (now http://127.0.0.1:1/)", "cannot re-resolve offline"} {
		if !strings.Contains(msg, want) {
			t.Errorf("offline under other roots, the failure does not say %q:\n%s", want, msg)
		}
	}

	// The same roots: warm, no server, no network.
	asked := m.Requests(m.VersionDir("ubuntu", "24.04")) + m.TotalContentRequests()
	out, _ := prep(true, throwaway...)
	if _, err := os.Stat(js); !os.IsNotExist(err) || out["resolved_from"] != "cache" {
		t.Errorf("the same roots were not answered warm (resolved from %v; %s: %v)", out["resolved_from"], js, err)
	}
	if now := m.Requests(m.VersionDir("ubuntu", "24.04")) + m.TotalContentRequests(); now != asked {
		t.Errorf("the warm prepare asked the mirror %d times", now-asked)
	}
}

// TestPrintResultSaysWhereFilesAre: a result whose files no one host holds
// (objects in the store) names each file's place; it printed
// "disk:        (qcow2)" with no path at all.
func TestPrintResultSaysWhereFilesAre(t *testing.T) {
	obj := func(hex string) *messages.ObjectRef {
		return &messages.ObjectRef{Bucket: "vmprep", Name: "sha256/" + hex}
	}
	res := messages.Result{Status: messages.ResultPrepared, DiskFormat: image.FormatQCOW2, Files: map[image.Role]messages.File{
		image.RoleKernel: {Object: obj("aa")},
		image.RoleDisk:   {Object: obj("bb"), Format: image.FormatQCOW2},
	}}
	var out strings.Builder
	printResult(&out, res)
	for _, want := range []string{"kernel:     object sha256/aa in bucket vmprep\n", "disk:       object sha256/bb in bucket vmprep (qcow2)\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printed\n%s\nwant a line %q", out.String(), want)
		}
	}
	if strings.Contains(out.String(), "disk:        (") {
		t.Errorf("printed a disk line with no place:\n%s", out.String())
	}
}

// TestPrepareRidesOutABusyServer: a mirror that answers 503 four times in a
// row (asking for a 1 s pause) is a busy server, not a dead one: prepare
// asks again, as it asks, and succeeds. Three 503s used to lose the run
// (each step was tried 3 times, 1 s and 2 s apart).
func TestPrepareRidesOutABusyServer(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchARM64))
	dir := m.VersionDir("ubuntu", "24.04")
	m.SetFault(dir, testmirror.Fault{Status: http.StatusServiceUnavailable, RetryAfter: "1", Times: 4})
	var stdout, stderr bytes.Buffer
	code := run([]string{"prepare", "--cache-dir", t.TempDir(), "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "arm64", "--progress", "plain", "ubuntu", "24.04"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if got := m.Requests(dir); got < 5 {
		t.Errorf("the listing was asked for %d times; want the 4 busy answers and one more", got)
	}
	if !strings.Contains(stderr.String(), "503") {
		t.Errorf("the retries were not shown:\n%s", stderr.String())
	}
}
