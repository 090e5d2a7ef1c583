package stage

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/natsembed"
)

// TestOwnedEntries: GetOwned reads the last entry the key's owner wrote
// (HeaderWriter), stepping back over the server's answers to requests
// that named the key's subject as reply subject ($JS.API.INFO, which any
// user may call); with none of the owner's left it is ErrTampered, never
// ErrKeyNotFound; the owner's own delete is ErrKeyNotFound.
func TestOwnedEntries(t *testing.T) {
	t.Parallel()
	const bucket, owner = "T", "resolver"
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Config: &server.Options{
		DontListen: true,
		Users: []*server.User{
			{Username: "owner", Password: "pw"},
			// May read single keys, not step back through their history.
			{Username: "narrow", Password: "pw", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"$JS.API.DIRECT.GET.KV_" + bucket + ".>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	connect := func(user string) *nats.Conn {
		nc, err := srv.Connect(nats.UserInfo(user, "pw"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	nc, narrow := connect("owner"), connect("narrow")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: OwnedHistory}); err != nil {
		t.Fatal(err)
	}
	erase := func(key string, n int) {
		for range n {
			before := lastSeq(t, nc, bucket, key)
			if err := nc.PublishRequest("$JS.API.INFO", "$KV."+bucket+"."+key, nil); err != nil {
				t.Fatal(err)
			}
			for lastSeq(t, nc, bucket, key) == before {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	put := func(key, writer, value string) {
		if _, err := PutOwned(ctx, nc, bucket, key, writer, []byte(value), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		key     string
		prepare func(key string)
		reader  *nats.Conn
		want    string // the value read, or:
		wantErr error
	}{
		{"never written", "none", func(string) {}, nc, "", ErrKeyNotFound},
		{"the owner's", "own", func(k string) { put(k, owner, "v1") }, nc, "v1", nil},
		{"the owner's last", "two", func(k string) { put(k, owner, "v1"); put(k, owner, "v2") }, nc, "v2", nil},
		{"erased once", "erased", func(k string) { put(k, owner, "v1"); erase(k, 1) }, nc, "v1", nil},
		{"erased up to the history", "erased7", func(k string) { put(k, owner, "v1"); erase(k, OwnedHistory-1) }, nc, "v1", nil},
		{"flooded", "flooded", func(k string) { put(k, owner, "v1"); erase(k, OwnedHistory) }, nc, "", ErrTampered},
		{"only erasures", "junk", func(k string) { erase(k, 1) }, nc, "", ErrTampered},
		{"another writer's marker", "other", func(k string) { put(k, "operator", "v1") }, nc, "", ErrTampered},
		{"the owner's delete, erased", "deleted", func(k string) {
			put(k, owner, "v1")
			if err := DeleteOwned(ctx, nc, bucket, k, owner, nil); err != nil {
				t.Fatal(err)
			}
			erase(k, 1)
		}, nc, "", ErrKeyNotFound},
		{"erased, read by a user that may not step back", "narrow", func(k string) { put(k, owner, "v1"); erase(k, 1) }, narrow, "", errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.prepare(tc.key)
			v, rev, err := GetOwned(ctx, tc.reader, bucket, tc.key, owner)
			switch {
			case tc.wantErr == errAny:
				if err == nil {
					t.Errorf("read %q, want an error", v)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("read %q, %v; want %v", v, err, tc.wantErr)
				}
			case err != nil || string(v) != tc.want:
				t.Errorf("read %q, %v; want %q", v, err, tc.want)
			}
			if last := lastSeq(t, nc, bucket, tc.key); rev != last {
				t.Errorf("revision %d, want the key's last, %d", rev, last)
			}
		})
	}

	// The owner's compare-and-set expects the key's last revision, whoever
	// wrote it: a relay between its read and its write costs a retry.
	put("cas", owner, "v1")
	_, rev, err := GetOwned(ctx, nc, bucket, "cas", owner)
	if err != nil {
		t.Fatal(err)
	}
	erase("cas", 1)
	if _, err := PutOwned(ctx, nc, bucket, "cas", owner, []byte("v2"), &rev); !errors.Is(err, ErrRevisionMismatch) {
		t.Fatalf("write over a moved revision: %v, want %v", err, ErrRevisionMismatch)
	}
	if _, rev, err = GetOwned(ctx, nc, bucket, "cas", owner); err != nil {
		t.Fatal(err)
	}
	if _, err := PutOwned(ctx, nc, bucket, "cas", owner, []byte("v2"), &rev); err != nil {
		t.Fatalf("write over the key's last revision: %v", err)
	}
	if v, _, err := GetOwned(ctx, nc, bucket, "cas", owner); err != nil || string(v) != "v2" {
		t.Fatalf("read %q, %v after the compare-and-set; want v2", v, err)
	}
}

// errAny: any error will do.
var errAny = errors.New("any error")

// lastSeq is the stream sequence of key's last entry (0: none).
func lastSeq(t *testing.T, nc *nats.Conn, bucket, key string) uint64 {
	t.Helper()
	m, err := nc.Request("$JS.API.DIRECT.GET.KV_"+bucket+".$KV."+bucket+"."+key, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Status") == "404" {
		return 0
	}
	seq, err := LastRevision(m.Header)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}
