package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const corpus = "../../testdata/qcow2"

func TestRunConvert(t *testing.T) {
	tests := []struct {
		name       string
		src        string // relative to the corpus; "" means none
		extraArgs  []string
		wantCode   int
		wantOut    bool   // DST must exist afterwards
		wantStderr string // substring of the single stderr line
	}{
		{name: "qcow2", src: "valid/zstd.qcow2", wantCode: 0, wantOut: true},
		{name: "with -j", src: "valid/extl2.qcow2", extraArgs: []string{"-j", "1"}, wantCode: 0, wantOut: true},
		{name: "backing file refused", src: "refuse/backing.qcow2", wantCode: 1, wantStderr: `backing file "base.qcow2"`},
		{name: "vmdk refused", src: "refuse/other.vmdk", wantCode: 1, wantStderr: "vmdk image, not qcow2"},
		{name: "missing source", src: "valid/does-not-exist.qcow2", wantCode: 1, wantStderr: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := filepath.Join(corpus, tt.src)
			dst := filepath.Join(t.TempDir(), "out.raw")
			var stdout, stderr bytes.Buffer
			args := append(append([]string{}, tt.extraArgs...), "-q", src, dst)
			code := runConvert(context.Background(), args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.wantCode, stderr.String())
			}
			_, statErr := os.Stat(dst)
			if exists := statErr == nil; exists != tt.wantOut {
				t.Fatalf("DST exists: %t, want %t", exists, tt.wantOut)
			}
			if tt.wantCode != 0 {
				msg := stderr.String()
				if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, src) || !strings.Contains(msg, tt.wantStderr) {
					t.Fatalf("stderr %q: want one line naming %s and %q", msg, src, tt.wantStderr)
				}
			}
		})
	}
}

// TestRunConvertFrom: --from (-f) qcow2 refuses a file whose qcow2 magic is
// broken instead of copying it as raw, as qemu-img -f qcow2 does.
func TestRunConvertFrom(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(corpus, "valid/zstd.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	broken := bytes.Clone(good)
	broken[3] = 0 // "QFI\xfb" -> "QFI\x00"
	tests := []struct {
		name       string
		src        []byte
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "--from qcow2 refuses a broken magic", src: broken, args: []string{"--from", "qcow2"}, wantCode: 1, wantStderr: "no qcow2 magic"},
		{name: "-f qcow2 refuses a broken magic", src: broken, args: []string{"-f", "qcow2"}, wantCode: 1, wantStderr: "no qcow2 magic"},
		{name: "-f qcow2 converts a qcow2", src: good, args: []string{"-f", "qcow2"}, wantCode: 0},
		{name: "detection copies a broken magic as raw", src: broken, wantCode: 0},
		{name: "-f raw copies a qcow2 as is", src: good, args: []string{"-f", "raw"}, wantCode: 0},
		{name: "unknown format", src: good, args: []string{"-f", "vmdk"}, wantCode: 2, wantStderr: "want qcow2, raw or auto"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "out.raw")
			if err := os.WriteFile(src, tt.src, 0o644); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			code := runConvert(context.Background(), append(append([]string{}, tt.args...), "-q", src, dst), &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.wantCode, stderr.String())
			}
			_, statErr := os.Stat(dst)
			if exists := statErr == nil; exists != (tt.wantCode == 0) {
				t.Fatalf("DST exists: %t, want %t", exists, tt.wantCode == 0)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr %q does not say %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}

func TestRunConvertUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"help", []string{"-h"}, 0},
		{"no args", nil, 2},
		{"one arg", []string{"x"}, 2},
		{"bad flag", []string{"--nope", "a", "b"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := runConvert(context.Background(), tt.args, &stdout, &stderr); code != tt.want {
				t.Fatalf("exit %d, want %d", code, tt.want)
			}
			if !strings.Contains(stderr.String(), "usage: vmprep convert") {
				t.Errorf("no usage on stderr: %q", stderr.String())
			}
		})
	}
}

func TestRunInspect(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		json     bool
		wantCode int
		want     []string // substrings of stdout (text) or checked fields (JSON)
		check    func(t *testing.T, rep inspectReport)
	}{
		{name: "text zstd", file: "valid/zstd.qcow2", wantCode: 0,
			want: []string{"file format: qcow2", "virtual size: 512 KiB (524288 bytes)", "cluster_size: 65536", "compression type: zstd", "compat: 1.1"}},
		{name: "text v2 snapshots", file: "valid/tiny-v2.qcow2", wantCode: 0,
			want: []string{"compat: 0.10 (version 2)", "snapshots: 1", "cluster_size: 512"}},
		{name: "json extended l2", file: "valid/extl2.qcow2", json: true, wantCode: 0, check: func(t *testing.T, rep inspectReport) {
			if rep.Format != "qcow2" || rep.Qcow2 == nil || !rep.Qcow2.ExtendedL2 || rep.Qcow2.Version != 3 || rep.VirtualSize != 512<<10 {
				t.Errorf("report %+v", rep)
			}
			if rep.Qcow2.AllocatedBytes <= 0 || rep.Qcow2.AllocatedBytes >= rep.VirtualSize {
				t.Errorf("allocated bytes %d of %d", rep.Qcow2.AllocatedBytes, rep.VirtualSize)
			}
		}},
		{name: "json dirty", file: "valid/dirty.qcow2", json: true, wantCode: 0, check: func(t *testing.T, rep inspectReport) {
			if !rep.Qcow2.Dirty || !rep.Qcow2.LazyRefcounts || rep.Qcow2.IncompatibleFeatures&1 == 0 {
				t.Errorf("dirty/lazy refcounts not reported: %+v", rep.Qcow2)
			}
		}},
		{name: "raw", file: "../../go.mod", json: true, wantCode: 0, check: func(t *testing.T, rep inspectReport) {
			if rep.Format != "raw" || rep.Qcow2 != nil {
				t.Errorf("report %+v", rep)
			}
		}},
		{name: "refused", file: "refuse/luks.qcow2", wantCode: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{filepath.Join(corpus, tt.file)}
			if tt.json {
				args = append([]string{"--json"}, args...)
			}
			var stdout, stderr bytes.Buffer
			code := runInspect(context.Background(), args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.wantCode, stderr.String())
			}
			if code != 0 {
				if !strings.Contains(stderr.String(), args[0]) || !strings.Contains(stderr.String(), "encryption") {
					t.Errorf("stderr %q does not name the file and cause", stderr.String())
				}
				return
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			if tt.check != nil {
				var rep inspectReport
				if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
					t.Fatal(err)
				}
				tt.check(t, rep)
			}
		})
	}
}
