package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/pkg/messages"
)

// The lines of deploy/nats/auth.conf between which the converter hosts'
// users go. nats-server's `include` sets keys of the map it appears in and
// cannot add elements to an array, so the per-host users are written into
// the users list itself, in a copy of auth.conf.
const (
	beginConverterHosts = "# BEGIN converter hosts"
	endConverterHosts   = "# END converter hosts"
)

// runUsers generates NATS users: `vmprep users converters`.
func runUsers(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "converters" {
		return failf(stderr, 2, "vmprep users", "usage: vmprep users converters --hosts H1,H2 --auth AUTH.CONF --out DIR")
	}
	fs := flag.NewFlagSet("users converters", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hostList := fs.String("hosts", "", "comma-separated converter hosts (their --target names)")
	auth := fs.String("auth", "deploy/nats/auth.conf", "the auth.conf to fill in (its "+beginConverterHosts+" … "+endConverterHosts+" lines)")
	out := fs.String("out", "", "directory for the filled-in auth.conf and each host's converter_<host>.password (kept if present)")
	cost := fs.Int("cost", defaultBcryptCost, "bcrypt cost of the password hashes")
	fs.Usage = cli.Usage(fs, "vmprep users converters --hosts H1,H2 --auth AUTH.CONF --out DIR\n\n"+
		"Gives each converter host its own NATS user converter_<host>, allowed only its consumer converter_<host>\n"+
		"(its --target subject), the untargeted converter's, its done subject and its liveness entries. Writes\n"+
		"DIR/auth.conf (AUTH.CONF with the hosts' users, bcrypt hashes, between its converter-host lines) and a\n"+
		"password file DIR/converter_<host>.password (0600) per host: an existing one is kept, so hosts already\n"+
		"running keep theirs. Hand each host its file (--user converter_<host> --password-file FILE), put\n"+
		"DIR/auth.conf where the nats-server configurations include it, reload them, and create the hosts'\n"+
		"consumers: vmprep setup --hosts H1,H2.")
	if ok, code := parseFlags(fs, args[1:]); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return failf(stderr, 2, "vmprep users converters", "unexpected argument %q", fs.Arg(0))
	}
	hosts, err := cli.SplitHosts(*hostList)
	if err != nil {
		return failf(stderr, 2, "vmprep users converters", "--hosts: %v", err)
	}
	if *out == "" {
		return failf(stderr, 2, "vmprep users converters", "--out DIR is required")
	}
	if *cost < bcrypt.MinCost || *cost > bcrypt.MaxCost {
		return failf(stderr, 2, "vmprep users converters", "--cost %d: want %d to %d", *cost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	conf, err := os.ReadFile(*auth)
	if err != nil {
		return failf(stderr, 1, "vmprep users converters", "%v", err)
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return failf(stderr, 1, "vmprep users converters", "%v", err)
	}
	var entries strings.Builder
	for _, h := range hosts {
		user := messages.TargetConsumer(h)
		pwFile := filepath.Join(*out, user+".password")
		pw, err := hostPassword(pwFile)
		if err != nil {
			return failf(stderr, 1, "vmprep users converters", "host %s: %v", h, err)
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(pw), *cost)
		if err != nil {
			return failf(stderr, 1, "vmprep users converters", "host %s: %v", h, err)
		}
		entries.WriteString(converterHostUser(h, string(hash)))
	}
	filled, err := fillConverterHosts(conf, entries.String())
	if err != nil {
		return failf(stderr, 1, "vmprep users converters", "%s: %v", *auth, err)
	}
	dst := filepath.Join(*out, "auth.conf")
	if err := atomicfile.WriteFile(dst, filled, 0o600); err != nil {
		return failf(stderr, 1, "vmprep users converters", "%v", err)
	}
	fmt.Fprintf(stdout, "%s: %d converter host user(s)\n", dst, len(hosts))
	for _, h := range hosts {
		fmt.Fprintf(stdout, "%s: %s\n", messages.TargetConsumer(h), filepath.Join(*out, messages.TargetConsumer(h)+".password"))
	}
	return 0
}

// hostPassword reads a host's password file, or makes one (0600): 32
// random bytes, base64url, starting with a letter, as deploy/docker's
// secrets.sh makes them.
func hostPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return "", fmt.Errorf("%s is empty: delete it to make a new password", path)
		}
		return pw, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	pw := "vp" + base64.RawURLEncoding.EncodeToString(raw)
	if err := atomicfile.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
		return "", err
	}
	return pw, nil
}

// fillConverterHosts replaces what is between conf's converter-host lines
// with entries.
func fillConverterHosts(conf []byte, entries string) ([]byte, error) {
	lines := bytes.SplitAfter(conf, []byte("\n"))
	begin, end := -1, -1
	for i, l := range lines {
		switch strings.TrimSpace(string(l)) {
		case beginConverterHosts:
			if begin >= 0 {
				return nil, fmt.Errorf("two %q lines", beginConverterHosts)
			}
			begin = i
		case endConverterHosts:
			if end >= 0 {
				return nil, fmt.Errorf("two %q lines", endConverterHosts)
			}
			end = i
		}
	}
	if begin < 0 || end < begin {
		return nil, fmt.Errorf("no %q line followed by an %q line inside the users list: the converter hosts' users go between them", beginConverterHosts, endConverterHosts)
	}
	var out bytes.Buffer
	for _, l := range lines[:begin+1] {
		out.Write(l)
	}
	out.WriteString(entries)
	for _, l := range lines[end:] {
		out.Write(l)
	}
	return out.Bytes(), nil
}

// converterHostUser is the users-list entry of the converter on host: its
// own consumer and target subject, the untargeted converter's consumer, its
// done subjects, its liveness entries, reads of what a converter reads, and
// its part of the fleet: its plan, its announcement and status entries, and
// requests in its own namespace for what its plan names.
func converterHostUser(host, hash string) string {
	user := messages.TargetConsumer(host)
	r := strings.NewReplacer("{USER}", user, "{HOST}", host, "{HASH}", hash)
	return r.Replace(`    {
      user: {USER}
      password: "{HASH}"
      permissions: {
        publish: {
          allow: [
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.VMPREP_WORK", "$JS.API.STREAM.INFO.VMPREP_RESULTS", "$JS.API.STREAM.INFO.VMPREP_DEAD",
            "$JS.API.STREAM.INFO.KV_VMPREP_REQUESTS", "$JS.API.STREAM.INFO.KV_VMPREP_LEASES",
            "$JS.API.STREAM.INFO.KV_VMPREP_VERIFIED", "$JS.API.STREAM.INFO.KV_VMPREP_PROCESSES",
            "$JS.API.STREAM.INFO.OBJ_vmprep",
            "$JS.API.CONSUMER.INFO.VMPREP_WORK.{USER}", "$JS.API.CONSUMER.MSG.NEXT.VMPREP_WORK.{USER}", "$JS.ACK.VMPREP_WORK.{USER}.>",
            "$JS.API.CONSUMER.INFO.VMPREP_WORK.converter", "$JS.API.CONSUMER.MSG.NEXT.VMPREP_WORK.converter", "$JS.ACK.VMPREP_WORK.converter.>",
            "vmprep.asset.done.converter.{HOST}", "vmprep.asset.done.converter",
            "vmprep.progress.>", "vmprep.dead.converter",
            # an object that pulled wrong: reported to the healer, never deleted
            "vmprep.asset.corrupt",
            "$JS.API.DIRECT.GET.KV_VMPREP_REQUESTS.>",
            # verified objects, read by batched direct gets (no consumer rights)
            "$JS.API.DIRECT.GET.OBJ_vmprep", "$JS.API.DIRECT.GET.OBJ_vmprep.>", "$JS.API.STREAM.MSG.GET.OBJ_vmprep",
            "$KV.VMPREP_PROCESSES.converter.{HOST}.>",
            # fleet selections (vmprep fleet): read its plan, announce itself and
            # write its own status entries only; ask for the images its plan
            # names as a client in its own namespace (its user name)
            "$JS.API.STREAM.INFO.KV_VMPREP_FLEET", "$JS.API.DIRECT.GET.KV_VMPREP_FLEET",
            "$JS.API.DIRECT.GET.KV_VMPREP_FLEET.$KV.VMPREP_FLEET.plan.{HOST}",
            "$KV.VMPREP_FLEET.host.{HOST}", "$KV.VMPREP_FLEET.status.{HOST}.>",
            "vmprep.prepare.{USER}", "$JS.API.DIRECT.GET.VMPREP_RESULTS.vmprep.result.{USER}.*",
          ]
        }
        subscribe: { allow: ["_INBOX_{USER}.>", "$KV.VMPREP_FLEET.plan.{HOST}", "vmprep.result.{USER}.*", "vmprep.progress.{USER}.*"] }
      }
    },
`)
}
