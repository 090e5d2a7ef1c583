package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/image"
)

// EnvBootKernel names the directory holding an unpacked Debian cloud kernel
// package (boot/vmlinuz-*, lib/modules/*/kernel/...): .ci/run sets it up.
const envBootKernel = "VMPREP_BOOT_KERNEL_DIR"

// The cloud kernel builds virtio as modules: loaded in dependency order.
var bootModules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk"}

const bootInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
for m in ` + "MODULES" + `; do /bin/busybox insmod /m/$m.ko || echo "VMPREP-FAIL insmod $m"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done
echo "VMPREP-DISK $(/bin/busybox head -c 1048576 /dev/vda | /bin/busybox sha256sum)"
echo -n VMPREP-WROTE-THIS | /bin/busybox dd of=/dev/vda bs=512 seek=8 conv=notrunc,fsync 2>/dev/null
/bin/busybox sync
echo VMPREP-BOOT-OK
/bin/busybox poweroff -f
`

// bootKit finds the kernel, busybox and QEMU a boot test needs; where they
// are missing the test is skipped, except in CI, which installs them.
func bootKit(t *testing.T) (kernel, initrd string) {
	t.Helper()
	skip := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI: "+format, args...)
		}
		t.Skipf(format, args...)
	}
	dir := os.Getenv(envBootKernel)
	if dir == "" {
		skip("%s is not set (.ci/run unpacks Debian's cloud kernel there)", envBootKernel)
	}
	ks, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(ks) == 0 {
		skip("no boot/vmlinuz-* in %s", dir)
	}
	for _, tool := range []string{"qemu-system-x86_64", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			skip("%s: %v", tool, err)
		}
	}
	bb, _ := exec.LookPath("busybox")
	if out, _ := exec.Command("file", "-L", bb).Output(); bytes.Contains(out, []byte("dynamically")) {
		skip("%s is not static (install busybox-static)", bb)
	}
	var files []cpioFile
	files = append(files,
		cpioFile{name: "dev", mode: 0o40755},
		cpioFile{name: "dev/console", mode: 0o20600, major: 5, minor: 1},
		cpioFile{name: "bin", mode: 0o40755},
		cpioFile{name: "m", mode: 0o40755},
		cpioFile{name: "init", mode: 0o100755, data: []byte(strings.Replace(bootInit, "MODULES", strings.Join(bootModules, " "), 1))},
	)
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, cpioFile{name: "bin/busybox", mode: 0o100755, data: b})
	for _, m := range bootModules {
		ms, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*", "kernel", "drivers", "*", m+".ko"))
		if len(ms) != 1 {
			skip("module %s not found once in %s: %v", m, dir, ms)
		}
		b, err := os.ReadFile(ms[0])
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, cpioFile{name: "m/" + m + ".ko", mode: 0o100644, data: b})
	}
	initrd = filepath.Join(t.TempDir(), "initrd.gz")
	if err := os.WriteFile(initrd, makeCpio(t, files), 0o644); err != nil {
		t.Fatal(err)
	}
	return ks[0], initrd
}

type cpioFile struct {
	name         string
	mode         uint32
	major, minor uint32
	data         []byte
}

// makeCpio writes a gzip'd newc archive, the initramfs format.
func makeCpio(t *testing.T, files []cpioFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	pad := func(n int) { zw.Write(make([]byte, (4-n%4)%4)) }
	for i, f := range append(files, cpioFile{name: "TRAILER!!!"}) {
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			i+1, f.mode, 0, 0, 1, 0, len(f.data), 0, 0, f.major, f.minor, len(f.name)+1, 0)
		zw.Write([]byte(hdr))
		zw.Write(append([]byte(f.name), 0))
		pad(len(hdr) + len(f.name) + 1)
		zw.Write(f.data)
		pad(len(f.data))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// boot runs QEMU in TCG mode (no KVM needed) with the disk and returns the
// serial console's output.
func boot(t *testing.T, kernel, initrd, disk, format string) string {
	t.Helper()
	log := filepath.Join(t.TempDir(), "serial.log")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "256",
		"-nodefaults", "-display", "none", "-monitor", "none", "-serial", "file:"+log, "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet",
		"-drive", "file="+disk+",format="+format+",if=virtio")
	out, err := cmd.CombinedOutput()
	serial, _ := os.ReadFile(log)
	if err != nil {
		t.Fatalf("qemu: %v\n%s\nserial:\n%s", err, out, serial)
	}
	return string(serial)
}

func sha256Prefix(t *testing.T, path string, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestBootClone boots a real Linux kernel in QEMU (TCG) from disks made by
// vmprep clone — a raw clone and a qcow2 overlay of an image prepared from
// the test mirror. The guest reads its disk (the base's content), writes a
// marker to it and says so on the serial console; the base is unchanged.
func TestBootClone(t *testing.T) {
	kernel, initrd := bootKit(t)
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(64<<20, 8<<20))
	cache, vms := t.TempDir(), t.TempDir()
	prep := []string{"--cache-dir", cache, "--mirror", m.URL, "--keyring", m.KeyringFile(), "--arch", "amd64"}
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			dest := filepath.Join(vms, "vm."+format)
			var stdout, stderr bytes.Buffer
			if code := run(append(append([]string{"clone", "--json"}, prep...), "--format", format, "ubuntu", "24.04", dest), &stdout, &stderr); code != 0 {
				t.Fatalf("clone: exit %d: %s", code, stderr.String())
			}
			res := cloneOutputOf(t, stdout.Bytes())
			// What the guest must read: the raw disk's first MiB.
			rawBase := res.Base
			if format == "qcow2" {
				rawBase = filepath.Join(t.TempDir(), "base.raw")
				if out, err := exec.Command("qemu-img", "convert", "-O", "raw", res.Base, rawBase).CombinedOutput(); err != nil {
					t.Fatalf("qemu-img convert: %v\n%s", err, out)
				}
			}
			want := sha256Prefix(t, rawBase, 1<<20)
			baseBefore := sha256Prefix(t, res.Base, 1<<62)

			serial := boot(t, kernel, initrd, dest, format)
			if !strings.Contains(serial, "VMPREP-BOOT-OK") || strings.Contains(serial, "VMPREP-FAIL") {
				t.Fatalf("the guest did not finish:\n%s", serial)
			}
			if !strings.Contains(serial, "VMPREP-DISK "+want) {
				t.Fatalf("the guest read another disk than the base (want sha256 %s):\n%s", want, serial)
			}
			if sha256Prefix(t, res.Base, 1<<62) != baseBefore {
				t.Fatal("booting the clone changed the base")
			}
			var seen []byte
			if format == "raw" {
				b, err := os.ReadFile(dest)
				if err != nil {
					t.Fatal(err)
				}
				seen = b[4096 : 4096+17]
			} else {
				blk := filepath.Join(t.TempDir(), "block")
				if out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", dest, blk).CombinedOutput(); err != nil {
					t.Fatalf("qemu-img convert: %v\n%s", err, out)
				}
				b, err := os.ReadFile(blk)
				if err != nil || len(b) < 4096+17 {
					t.Fatalf("the overlay read through qemu-img: %d bytes, %v", len(b), err)
				}
				seen = b[4096 : 4096+17]
			}
			if string(seen) != "VMPREP-WROTE-THIS" {
				t.Fatalf("the guest's write is not in the clone: %q", seen)
			}
		})
	}
}
