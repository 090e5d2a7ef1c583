package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

func runOK(t *testing.T, args ...string) (string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("vmprep %s: exit %d, stderr: %s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String(), stderr.String()
}

func TestCatalogCommandAndSerials(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchARM64), testmirror.WithSerials("20260901", "20260926"),
		testmirror.WithDiskSize(4<<20, 256<<10), testmirror.WithKernelSize(8<<10, 8<<10))
	cache := t.TempDir()
	src := []string{"--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "arm64"}

	out, _ := runOK(t, "catalog")
	for _, want := range []string{"ubuntu", "kernel", "detached", "debian", "unsigned", "fedora", "no key configured", "alpine", "unsupported: "} {
		if !strings.Contains(out, want) {
			t.Errorf("catalog lacks %q:\n%s", want, out)
		}
	}
	out, _ = runOK(t, "catalog", "--json")
	var distros struct{ Distros []catalog.Info }
	if err := json.Unmarshal([]byte(out), &distros); err != nil || len(distros.Distros) != 4 {
		t.Fatalf("catalog --json: %v\n%s", err, out)
	}

	// The builds the mirror lists, newest first, with dates; none cached yet.
	out, _ = runOK(t, append([]string{"catalog", "ubuntu", "noble"}, src...)...)
	if !regexp.MustCompile(`(?s)20260926\s+2026-09-26\s+-\n20260901\s+2026-09-01\s+-\n`).MatchString(out) {
		t.Errorf("serials before any prepare:\n%s", out)
	}

	// Pin the older build; then take the newest.
	out, _ = runOK(t, append([]string{"prepare", "--serial", "20260901", "ubuntu", "24.04"}, src...)...)
	if !strings.Contains(out, "serial:     20260901") {
		t.Errorf("prepare --serial output:\n%s", out)
	}
	out, _ = runOK(t, append([]string{"prepare", "--json", "ubuntu", "noble"}, src...)...)
	var res messages.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Resolved == nil || res.Resolved.Serial != "20260926" || res.Resolved.Version != "24.04" {
		t.Fatalf("prepare --json: resolved %v (%v)\n%s", res.Resolved, err, out)
	}

	out, _ = runOK(t, append([]string{"catalog", "--json", "ubuntu", "24.04"}, src...)...)
	var listing serialsOutput
	if err := json.Unmarshal([]byte(out), &listing); err != nil {
		t.Fatal(err)
	}
	if listing.Source != "network" || len(listing.Serials) != 2 ||
		listing.Serials[0] != (serialInfo{Serial: "20260926", Date: listing.Serials[0].Date, URL: listing.Serials[0].URL, Cached: true, Recorded: true, NewestVerified: true}) ||
		!listing.Serials[1].Cached || listing.Serials[1].NewestVerified {
		t.Errorf("catalog --json ubuntu 24.04: %+v", listing)
	}
	out, _ = runOK(t, append([]string{"catalog", "ubuntu"}, src...)...)
	if !regexp.MustCompile(`24\.04\s+noble\s+arm64 \(20260926\)`).MatchString(out) {
		t.Errorf("catalog ubuntu:\n%s", out)
	}

	// No network: the cached builds, and a note saying so.
	m.SetFault(m.VersionDir("ubuntu", "24.04"), testmirror.Fault{Status: 503, Times: 1000})
	out, errOut := runOK(t, append([]string{"catalog", "ubuntu", "24.04"}, src...)...)
	if !strings.Contains(errOut, "cannot list serials from the network") ||
		!regexp.MustCompile(`(?s)20260926\s+\S+\s+yes, newest verified\n20260901\s+\S+\s+yes\n`).MatchString(out) {
		t.Errorf("offline catalog:\nstdout: %s\nstderr: %s", out, errOut)
	}
	m.ClearFault(m.VersionDir("ubuntu", "24.04"))
	// Under other trust roots (another mirror, the built-in keys) those
	// builds would answer no prepare: none is listed as cached.
	offline := []string{"--cache-dir", cache, "--mirror", "http://127.0.0.1:1/", "--arch", "arm64"}
	out, errOut = runOK(t, append([]string{"catalog", "ubuntu", "24.04"}, offline...)...)
	if !strings.Contains(errOut, "cannot list serials from the network") || !strings.Contains(out, "(none)") {
		t.Errorf("offline catalog under other roots:\nstdout: %s\nstderr: %s", out, errOut)
	}

	out, _ = runOK(t, append([]string{"catalog", "fedora", "41"}, src...)...)
	if !strings.Contains(out, "no serials") {
		t.Errorf("fedora: %s", out)
	}
	out, _ = runOK(t, append([]string{"catalog", "alpine"}, src...)...)
	if !strings.Contains(out, "not supported") {
		t.Errorf("alpine: %s", out)
	}

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  []string
	}{
		{"missing serial names the published ones", append([]string{"prepare", "--serial", "20250101", "ubuntu", "24.04"}, src...), 1, []string{"20250101", "20260926", "20260901"}},
		{"serial with a path", append([]string{"prepare", "--serial", "../x", "ubuntu", "24.04"}, src...), 2, []string{"serial"}},
		{"mirror ending in releases/", []string{"prepare", "--cache-dir", t.TempDir(), "--mirror", m.URL + "releases/", "--keyring", m.KeyringFile(), "--arch", "arm64", "ubuntu", "24.04"}, 1, []string{"--mirror must be the root that contains releases/"}},
		{"unknown distro", []string{"catalog", "plan9"}, 1, []string{"ubuntu"}},
		{"too many arguments", []string{"catalog", "a", "b", "c"}, 2, []string{"DISTRO VERSION"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(tt.args, &stdout, &stderr); code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.wantCode, stderr.String())
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr %q does not mention %q", stderr.String(), w)
				}
			}
		})
	}
}
