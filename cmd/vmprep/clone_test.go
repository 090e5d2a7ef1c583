package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/image"
)

func TestCloneCommand(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchARM64))
	cache := t.TempDir()
	vms := t.TempDir()
	prep := []string{"--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "arm64"}
	runT := func(args ...string) (int, string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	cloneJSON := func(args ...string) cloneOutput {
		t.Helper()
		code, out, errOut := runT(append([]string{"clone", "--json"}, args...)...)
		if code != 0 {
			t.Fatalf("clone %v: exit %d: %s", args, code, errOut)
		}
		var res cloneOutput
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("clone --json: %v\n%s", err, out)
		}
		return res
	}

	// Not prepared yet: clone prepares first (the flags are prepare's), then
	// writes an overlay whose backing file is the cached qcow2.
	ov := filepath.Join(vms, "vm1.qcow2")
	res := cloneJSON(append(prep, "--format", "qcow2", "--size", "4G", "ubuntu", "24.04", ov)...)
	if res.Method != clone.MethodOverlay || res.Path != ov || res.Size != 4<<30 || res.Image == nil || res.Image.DiskFormat != "qcow2" {
		t.Fatalf("overlay clone: %+v", res)
	}
	info, err := exec.Command("qemu-img", "info", "--output=json", ov).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(info), `"backing-filename-format": "qcow2"`) || !strings.Contains(string(info), res.Base) || !strings.HasPrefix(res.Base, cache) {
		t.Fatalf("qemu-img info of the overlay: %s (base %s)", info, res.Base)
	}

	// Raw: a reflink where the file system can, else a sparse copy said so.
	raw := filepath.Join(vms, "vm2.raw")
	code, out, errOut := runT(append(append([]string{"clone"}, prep...), "--format", "raw", "ubuntu", "24.04", raw)...)
	if code != 0 || !strings.Contains(out, "path:    "+raw) || !strings.Contains(out, "format:  raw") || !strings.Contains(out, "method:  ") {
		t.Fatalf("raw clone: exit %d\n%s\n%s", code, out, errOut)
	}
	// The prepare it ran first (a raw disk: a conversion) showed its
	// progress as prepare does: plain lines on a stderr that is no terminal.
	if !strings.Contains(errOut, "resolve ubuntu 24.04 arm64") || !strings.Contains(errOut, "convert disk") {
		t.Errorf("clone's prepare showed no progress:\n%s", errOut)
	}
	fi, err := os.Stat(raw)
	if err != nil || fi.Mode().Perm()&0o200 == 0 {
		t.Fatalf("clone %v %v: want a writable file", fi, err)
	}

	// An existing DEST is refused, and replaced with --force.
	code, _, errOut = runT(append(append([]string{"clone"}, prep...), "--format", "raw", "ubuntu", "24.04", raw)...)
	if code != 2 || !strings.Contains(errOut, raw) || !strings.Contains(errOut, "exists") {
		t.Fatalf("existing DEST: exit %d: %s", code, errOut)
	}
	// --from a disk of the cache, as images/ links it.
	link := filepath.Join(cache, "images", "ubuntu", "24.04", "arm64")
	ents, _ := os.ReadDir(link)
	var disk string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "disk") {
			disk = filepath.Join(link, e.Name())
		}
	}
	if disk == "" {
		t.Fatalf("no disk link in %s: %v", link, ents)
	}
	res = cloneJSON("--cache-dir", cache, "--format", "qcow2", "--force", "--from", disk, raw)
	if res.Method != clone.MethodOverlay {
		t.Fatalf("--from: %+v", res)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--from", ov, filepath.Join(vms, "x")}, 1, "not a disk in the cache"},
		{[]string{"--from", disk, "--size", "1M", filepath.Join(vms, "y")}, 2, "smaller"},
		{[]string{"--from", disk, "--size", "lots", filepath.Join(vms, "y")}, 2, "lots"},
		{[]string{"ubuntu", "24.04"}, 2, "DISTRO VERSION DEST"},
	} {
		code, _, errOut := runT(append([]string{"clone", "--cache-dir", cache, "--format", "qcow2"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("clone %v: exit %d, want %d with %q: %s", tc.args, code, tc.code, tc.want, errOut)
		}
	}

	// The cache knows its clones: clone --list, cache ls.
	code, out, errOut = runT("clone", "--list", "--cache-dir", cache)
	if code != 0 || !strings.Contains(out, ov) || !strings.Contains(out, raw) || strings.Count(out, "keeps its base") != 2 {
		t.Fatalf("clone --list: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = runT("cache", "--cache-dir", cache, "ls")
	if code != 0 || !strings.Contains(out, "clone "+ov+" (overlay)") || !strings.Contains(out, "clone "+raw+" (overlay)") {
		t.Fatalf("cache ls does not show the clones:\n%s", out)
	}
	if err := os.Remove(ov); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runT("clone", "--list", "--cache-dir", cache)
	if code != 0 || !strings.Contains(out, ov+" is gone") {
		t.Fatalf("clone --list after removing a clone:\n%s", out)
	}
}

func cloneOutputOf(t *testing.T, b []byte) cloneOutput {
	t.Helper()
	var res cloneOutput
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("clone --json: %v\n%s", err, b)
	}
	return res
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1073741824": 1 << 30, "20G": 20 << 30, "512M": 512 << 20, "1GiB": 1 << 30, "3k": 3 << 10, "2T": 2 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1G", "G", "1.5G", "99999999999T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}
