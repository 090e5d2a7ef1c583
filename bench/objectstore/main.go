// Command objectstore measures one object-store transfer against a running
// nats-server: a put or a get of one file, in MB/s, with this process's peak
// RSS (the server runs as its own process). It drives either vmprep's
// internal/objectstore (-impl ours) or nats.go's own jetstream.ObjectStore
// (-impl natsgo) on the same bucket layout, so bench/objectstore/run.sh can
// compare them in one run.
//
//	go run ./bench/objectstore -nats nats://127.0.0.1:4222 -file big.img [-replicas 3] [-impl natsgo] [-mode put|get|put,get|delete]
//
// It prints one line per operation:
//
//	put <impl> <bytes> <seconds> <MB/s> <peak RSS bytes>
package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/pkg/digest"
)

type options struct {
	url, file, bucket, impl, mode, sum string
	cpuProfile                         string
	replicas, chunk, window            int
}

func main() {
	var o options
	flag.StringVar(&o.url, "nats", nats.DefaultURL, "NATS server URL(s), comma-separated")
	flag.StringVar(&o.file, "file", "", "file to put (and whose object to get)")
	flag.StringVar(&o.bucket, "bucket", "bench", "object bucket")
	flag.StringVar(&o.impl, "impl", "ours", "ours (internal/objectstore) or natsgo (jetstream.ObjectStore)")
	flag.StringVar(&o.mode, "mode", "put,get", "put, get, put,get, or delete (the bucket)")
	flag.StringVar(&o.sum, "sha256", "", "the file's SHA-256 in hex (default: hash the file first, untimed)")
	flag.IntVar(&o.replicas, "replicas", 1, "bucket replicas")
	flag.IntVar(&o.chunk, "chunk", 0, "chunk size in bytes (0: the implementation's default)")
	flag.IntVar(&o.window, "window", 0, "chunks in flight (ours only; 0: default)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the transfers to this file (go tool pprof)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "objectstore bench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	// A deadline of our own: without one, every JetStream API call of both
	// implementations times out after nats.go's default 5 s, which a loaded
	// server that has just taken a GiB can exceed (seen: nats.go's Get).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	nc, err := nats.Connect(o.url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if o.mode == "delete" {
		err := js.DeleteStream(ctx, objectstore.StreamName(o.bucket))
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			err = nil
		}
		return err
	}
	if o.file == "" {
		return errors.New("-file is required")
	}
	d, size, err := fileDigest(o.file, o.sum)
	if err != nil {
		return err
	}
	var put, get func() (int64, error)
	switch o.impl {
	case "ours":
		put, get, err = ours(ctx, js, o, d)
	case "natsgo":
		put, get, err = natsgo(ctx, js, o, d)
	default:
		return fmt.Errorf("-impl %q: want ours or natsgo", o.impl)
	}
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	for _, op := range strings.Split(o.mode, ",") {
		f := map[string]func() (int64, error){"put": put, "get": get}[op]
		if f == nil {
			return fmt.Errorf("-mode %q: want put, get or delete", op)
		}
		t0 := time.Now()
		n, err := f()
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		el := time.Since(t0)
		if n != size {
			return fmt.Errorf("%s moved %d bytes, the file has %d", op, n, size)
		}
		fmt.Printf("%s %s %d %.3f %.1f %d\n", op, o.impl, n, el.Seconds(), float64(n)/el.Seconds()/1e6, cluster.PeakRSSOf(os.Getpid()))
	}
	return nil
}

func fileDigest(path, sum string) (digest.Digest, int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return digest.Digest{}, 0, err
	}
	if sum != "" {
		return digest.Digest{Algorithm: digest.SHA256, Hex: strings.ToLower(sum)}, st.Size(), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return digest.Digest{}, 0, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return digest.Digest{}, 0, err
	}
	return digest.FromHash(digest.SHA256, h), st.Size(), nil
}

// ours drives internal/objectstore: bounded put window, ordered-consumer get
// (which checks the writer's digest).
func ours(ctx context.Context, js jetstream.JetStream, o options, d digest.Digest) (put, get func() (int64, error), err error) {
	var opts []objectstore.Option
	if o.chunk > 0 {
		opts = append(opts, objectstore.WithChunkSize(o.chunk))
	}
	if o.window > 0 {
		opts = append(opts, objectstore.WithWindow(o.window))
	}
	s, err := objectstore.Open(ctx, js, objectstore.Config{Bucket: o.bucket, Replicas: o.replicas}, opts...)
	if err != nil {
		return nil, nil, err
	}
	put = func() (int64, error) {
		info, err := s.PutFile(ctx, d, o.file, nil)
		return info.Size, err
	}
	get = func() (int64, error) {
		info, err := s.Stat(ctx, d)
		if err != nil {
			return 0, err
		}
		r, err := s.Open(ctx, info)
		if err != nil {
			return 0, err
		}
		defer r.Close()
		return io.Copy(io.Discard, r)
	}
	return put, get, nil
}

// natsgo drives nats.go's jetstream.ObjectStore with its defaults (128 KiB
// chunks, async publishes bounded only by the client's pending limit; Get
// checks the digest) under the same object name.
func natsgo(ctx context.Context, js jetstream.JetStream, o options, d digest.Digest) (put, get func() (int64, error), err error) {
	cfg := jetstream.ObjectStoreConfig{Bucket: o.bucket, Replicas: o.replicas, Storage: jetstream.FileStorage}
	obs, err := js.CreateObjectStore(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		obs, err = js.ObjectStore(ctx, o.bucket)
	}
	if err != nil {
		return nil, nil, err
	}
	name := objectstore.Name(d)
	put = func() (int64, error) {
		f, err := os.Open(o.file)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		meta := jetstream.ObjectMeta{Name: name}
		if o.chunk > 0 {
			meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: uint32(o.chunk)}
		}
		info, err := obs.Put(ctx, meta, f)
		if err != nil {
			return 0, err
		}
		return int64(info.Size), nil
	}
	get = func() (int64, error) {
		r, err := obs.Get(ctx, name)
		if err != nil {
			return 0, err
		}
		defer r.Close()
		return io.Copy(io.Discard, r)
	}
	return put, get, nil
}
