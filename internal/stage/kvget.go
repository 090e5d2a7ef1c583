package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/pkg/messages"
)

// ErrKeyNotFound: the key has no value (never written, or deleted by its owner).
var ErrKeyNotFound = errors.New("key not found")

// ErrRelayed means an entry was published by the server as the answer to
// someone's request (a direct get naming the key's subject as its reply
// subject), not written by the key's owner: permissions check only the
// subject a user publishes to, so any user that may direct-get content it
// writes (a host its status, the fetcher its leases and objects) could
// otherwise store that content under a key only another party may write.
var ErrRelayed = errors.New("entry relayed by the server for another user, not written by its owner")

// ErrTampered means a key holds entries, but none its owner wrote is left
// in its history: someone overwrote it more often than the bucket keeps
// (the server's answers to requests naming the key's subject as reply
// subject). It is not "not found": a reader keeps what it has.
var ErrTampered = errors.New("no entry written by the key's owner is left in its history (overwritten by others)")

// ErrRevisionMismatch: a conditional write found another last revision.
var ErrRevisionMismatch = errors.New("the key's last revision is not the one expected")

// HeaderWriter marks an entry with the role of the party that wrote it
// (messages.HeaderWriter). Only that party may publish on the key's
// subject, so an entry carrying its owner's marker and none of the
// server's relay markings (messages.Relayed) is the owner's: the server's
// answers to requests that name the key as reply subject ($JS.API.INFO,
// which every user may call) carry no marker. Every owned write goes
// through PutOwned or DeleteOwned; every owned read through GetOwned or
// Owned.
const HeaderWriter = messages.HeaderWriter

// OwnedHistory is how many entries per key a bucket read with GetOwned
// keeps: a read steps back over up to OwnedHistory-1 entries others put
// on the key before it finds none of its owner's (ErrTampered).
const OwnedHistory = 8

// maxWalk bounds the revisions one read walks back: more than any
// bucket's history (setup keeps OwnedHistory).
const maxWalk = 64

// Owned reports whether m, a direct get's answer of key-value bucket
// bucket's subject, is of an entry owner wrote: its header block read
// whole (HeaderWhole), not relayed (messages.Relayed) and carrying
// exactly one writer marker, owner's.
func Owned(m *nats.Msg, bucket, subject, owner string) bool {
	return HeaderWhole(m) && !messages.Relayed(m.Header, "KV_"+bucket, subject) && messages.Marked(m.Header, owner)
}

// HeaderWhole reports whether m's parsed headers are all of its header
// block (messages.HeaderWhole): a block made by hand with a blank line
// inside hides from nats.go whatever follows, the server's relay
// markings included, and what it shows (a marker, a stream, a subject, a
// sequence) is the attacker's.
func HeaderWhole(m *nats.Msg) bool {
	return messages.HeaderWhole(m.Header, m.Size()-len(m.Subject)-len(m.Reply)-len(m.Data))
}

// LastRevision is the stream sequence the server put on a direct get's
// answer: the last Nats-Sequence (a relayed entry keeps the one of the
// message it copied, and the server appends its own after it).
func LastRevision(h nats.Header) (uint64, error) {
	var seqs []string
	for k, v := range h {
		if strings.EqualFold(k, "Nats-Sequence") {
			seqs = append(seqs, v...)
		}
	}
	if len(seqs) == 0 {
		return 0, errors.New("no revision in the server's answer")
	}
	return strconv.ParseUint(seqs[len(seqs)-1], 10, 64)
}

// GetOwned reads the value owner last wrote to key in key-value bucket
// bucket, by direct gets (no consumer). rev is the key's last revision —
// what a conditional write (PutOwned) must expect — also when err is
// ErrKeyNotFound or ErrTampered. An entry the owner did not write (an
// answer the server relayed onto the key: ErrRelayed content, or an API
// answer without a marker) is stepped over, back through the key's
// history, to the last one the owner wrote; if none is left, ErrTampered.
// jetstream.KeyValue.Get cannot tell: an entry has no headers.
func GetOwned(ctx context.Context, nc *nats.Conn, bucket, key, owner string) (value []byte, rev uint64, err error) {
	subject := "$KV." + bucket + "." + key
	m, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.KV_"+bucket+"."+subject, nil)
	newestRelayed := false
	for walked := 0; ; walked++ {
		if err != nil {
			return nil, rev, fmt.Errorf("read %s/%s: %w", bucket, key, err)
		}
		switch status := m.Header.Get("Status"); status {
		case "":
			if !HeaderWhole(m) {
				// Its revision is the attacker's too: walking back from it
				// could skip the owner's last entries to an older one.
				return nil, rev, tampered(bucket, key, true)
			}
		case "404":
			if rev == 0 {
				return nil, 0, fmt.Errorf("read %s/%s: %w", bucket, key, ErrKeyNotFound)
			}
			return nil, rev, tampered(bucket, key, newestRelayed)
		default:
			return nil, rev, fmt.Errorf("read %s/%s: server answered %s %s", bucket, key, status, m.Header.Get("Description"))
		}
		var seq uint64
		if seq, err = LastRevision(m.Header); err != nil {
			return nil, rev, fmt.Errorf("read %s/%s: %w", bucket, key, err)
		}
		if rev == 0 {
			rev = seq
		}
		if Owned(m, bucket, subject, owner) {
			switch m.Header.Get("KV-Operation") {
			case "DEL", "PURGE":
				return nil, rev, fmt.Errorf("read %s/%s: %w", bucket, key, ErrKeyNotFound)
			}
			return m.Data, rev, nil
		}
		if walked == 0 && messages.Relayed(m.Header, "KV_"+bucket, subject) {
			newestRelayed = true
		}
		if seq <= 1 || walked >= maxWalk {
			return nil, rev, tampered(bucket, key, newestRelayed)
		}
		// The last entry of the subject before this one: a batched get
		// (up_to_seq applies to multi_last only, nats-server 2.11+).
		body, _ := json.Marshal(struct {
			MultiLast []string `json:"multi_last"`
			UpToSeq   uint64   `json:"up_to_seq"`
			Batch     int      `json:"batch"`
		}{[]string{subject}, seq - 1, 1})
		api := "$JS.API.DIRECT.GET.KV_" + bucket
		denied, werr := Call(ctx, nc, api, func(ctx context.Context) (err error) {
			m, err = nc.RequestWithContext(ctx, api, body)
			return err
		})
		if err = werr; denied {
			err = fmt.Errorf("this user may not read the key's history (%s): %w", api, werr)
		}
	}
}

// tampered is ErrTampered, and ErrRelayed too when the newest entry is a
// relay (forged content rather than an API answer).
func tampered(bucket, key string, relayed bool) error {
	if relayed {
		return fmt.Errorf("read %s/%s: %w (the last: %w)", bucket, key, ErrTampered, ErrRelayed)
	}
	return fmt.Errorf("read %s/%s: %w", bucket, key, ErrTampered)
}

// PutOwned writes value to key as owner (HeaderWriter). With expect
// non-nil the write happens only if the key's last revision is *expect
// (0: the key has no entry), else ErrRevisionMismatch. It returns the new
// revision.
func PutOwned(ctx context.Context, nc *nats.Conn, bucket, key, owner string, value []byte, expect *uint64) (uint64, error) {
	return publishOwned(ctx, nc, bucket, key, owner, value, "", expect)
}

// DeleteOwned deletes key as owner: a delete marker carrying HeaderWriter,
// so that readers tell it from an entry someone else put there.
func DeleteOwned(ctx context.Context, nc *nats.Conn, bucket, key, owner string, expect *uint64) error {
	_, err := publishOwned(ctx, nc, bucket, key, owner, nil, "DEL", expect)
	return err
}

func publishOwned(ctx context.Context, nc *nats.Conn, bucket, key, owner string, value []byte, op string, expect *uint64) (uint64, error) {
	verb := "write"
	if op != "" {
		verb = "delete"
	}
	m := nats.NewMsg("$KV." + bucket + "." + key)
	m.Data = value
	m.Header.Set(HeaderWriter, owner)
	if op != "" {
		m.Header.Set("KV-Operation", op)
	}
	if expect != nil {
		m.Header.Set("Nats-Expected-Last-Subject-Sequence", strconv.FormatUint(*expect, 10))
	}
	reply, err := nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		return 0, fmt.Errorf("%s %s/%s: %w", verb, bucket, key, err)
	}
	var ack struct {
		Seq   uint64 `json:"seq"`
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return 0, fmt.Errorf("%s %s/%s: unreadable acknowledgement %q: %w", verb, bucket, key, reply.Data, err)
	}
	if ack.Error != nil {
		// wrong last sequence (JSStreamWrongLastSequenceErrF, …ConstantErr)
		if ack.Error.ErrCode == 10071 || ack.Error.ErrCode == 10164 {
			return 0, fmt.Errorf("%s %s/%s: %w: %s", verb, bucket, key, ErrRevisionMismatch, ack.Error.Description)
		}
		return 0, fmt.Errorf("%s %s/%s: server refused: %s (%d)", verb, bucket, key, ack.Error.Description, ack.Error.ErrCode)
	}
	if ack.Seq == 0 {
		return 0, fmt.Errorf("%s %s/%s: no acknowledgement from the stream (%q)", verb, bucket, key, reply.Data)
	}
	return ack.Seq, nil
}
