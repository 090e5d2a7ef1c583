package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"golang.org/x/crypto/bcrypt"
)

// TestUsersConverters fills deploy/nats/auth.conf with two hosts' users and
// loads the result as nats-server does: each host's user is there, its
// password file's password logs in as it, its consumer and target are its
// own, and a second run keeps the passwords.
func TestUsersConverters(t *testing.T) {
	for _, env := range []string{"ADMIN", "RESOLVER", "FETCHER", "VERIFIER", "CONVERTER", "ALICE", "BOB"} {
		t.Setenv("VMPREP_"+env+"_PASSWORD", "pw-"+strings.ToLower(env))
	}
	out := t.TempDir()
	run := func() string {
		var stdout, stderr bytes.Buffer
		if code := runUsers(t.Context(), []string{"converters", "--hosts", "mac1,mac-2", "--auth", "../../deploy/nats/auth.conf", "--out", out, "--cost", "4"}, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		b, err := os.ReadFile(filepath.Join(out, "converter_mac1.password"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	first := run()
	if again := run(); again != first {
		t.Errorf("a second run changed mac1's password")
	}
	st, err := os.Stat(filepath.Join(out, "converter_mac1.password"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("password file: %v, mode %v", err, st.Mode())
	}
	opts, err := server.ProcessConfigFile(filepath.Join(out, "auth.conf"))
	if err != nil {
		t.Fatalf("nats-server cannot load the generated auth.conf: %v", err)
	}
	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	for _, host := range []string{"mac1", "mac-2"} {
		u := users["converter_"+host]
		if u == nil {
			t.Fatalf("no user converter_%s among %v", host, opts.Users)
		}
		pw, _ := os.ReadFile(filepath.Join(out, "converter_"+host+".password"))
		if err := bcrypt.CompareHashAndPassword([]byte(u.Password), bytes.TrimSpace(pw)); err != nil {
			t.Errorf("converter_%s: the password file does not match the hash: %v", host, err)
		}
		allow := strings.Join(u.Permissions.Publish.Allow, " ")
		for _, want := range []string{"$JS.API.CONSUMER.MSG.NEXT.VMPREP_WORK.converter_" + host, "vmprep.asset.done.converter." + host, "$KV.VMPREP_PROCESSES.converter." + host + ".>",
			"$KV.VMPREP_FLEET.status." + host + ".>", "vmprep.prepare.converter_" + host} {
			if !strings.Contains(allow, want) {
				t.Errorf("converter_%s may not %s", host, want)
			}
		}
		// Its own fleet status entries only; selections, builds and plans are not its to write.
		for _, subj := range u.Permissions.Publish.Allow {
			if strings.HasPrefix(subj, "$KV.VMPREP_FLEET.") && subj != "$KV.VMPREP_FLEET.host."+host && subj != "$KV.VMPREP_FLEET.status."+host+".>" {
				t.Errorf("converter_%s may write fleet entries not its own: %s", host, subj)
			}
		}
		if strings.Contains(allow, "CONSUMER.CREATE.VMPREP_WORK") || strings.Contains(allow, "VMPREP_WORK.*") {
			t.Errorf("converter_%s may create or name any consumer: %s", host, allow)
		}
	}
	if users["converter"] == nil || users["admin"] == nil {
		t.Errorf("the static users were lost")
	}
}

func TestUsersConvertersRefuses(t *testing.T) {
	noRegion := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(noRegion, []byte("authorization { users: [] }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"converters", "--hosts", "mac.1", "--out", t.TempDir()}, "target host \"mac.1\""},
		{[]string{"converters", "--hosts", "mac1"}, "--out DIR is required"},
		{[]string{"converters", "--hosts", "mac1", "--auth", noRegion, "--out", t.TempDir()}, "no \"# BEGIN converter hosts\" line"},
		{[]string{"servers"}, "usage: vmprep users converters"},
	} {
		var stdout, stderr bytes.Buffer
		if code := runUsers(t.Context(), tc.args, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, %s; want %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
