// Command objectstore measures vmprep's object-store transfer (pkg/objectstore)
// against a nats-server: put and get of one file, in MB/s, with this
// process's peak RSS (the server runs as its own process).
//
//	go run ./bench/objectstore -nats nats://127.0.0.1:4222 -file big.img [-replicas 3]
package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/objectstore"
)

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS server URL(s)")
	file := flag.String("file", "", "file to put and get")
	bucket := flag.String("bucket", "bench", "object bucket")
	replicas := flag.Int("replicas", 1, "bucket replicas")
	chunk := flag.Int("chunk", 0, "chunk size (0: default)")
	window := flag.Int("window", 0, "chunks in flight (0: default)")
	mode := flag.String("mode", "put,get", "put, get or both")
	flag.Parse()
	if err := run(*url, *file, *bucket, *replicas, *chunk, *window, *mode); err != nil {
		fmt.Fprintln(os.Stderr, "objectstore bench:", err)
		os.Exit(1)
	}
}

func run(url, file, bucket string, replicas, chunk, window int, mode string) error {
	ctx := context.Background()
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var opts []objectstore.Option
	if chunk > 0 {
		opts = append(opts, objectstore.WithChunkSize(chunk))
	}
	if window > 0 {
		opts = append(opts, objectstore.WithWindow(window))
	}
	s, err := objectstore.Open(ctx, js, objectstore.Config{Bucket: bucket, Replicas: replicas}, opts...)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	h := sha256.New()
	size, err := io.Copy(h, f)
	f.Close()
	if err != nil {
		return err
	}
	d := digest.FromHash(digest.SHA256, h)
	if strings.Contains(mode, "put") {
		t0 := time.Now()
		if _, err := s.PutFile(ctx, d, file, nil); err != nil {
			return err
		}
		el := time.Since(t0)
		fmt.Printf("put %d bytes in %.2fs: %.0f MB/s, peak RSS %d MiB\n", size, el.Seconds(), float64(size)/el.Seconds()/1e6, peakRSS()>>20)
	}
	if strings.Contains(mode, "get") {
		info, err := s.Stat(ctx, d)
		if err != nil {
			return err
		}
		t0 := time.Now()
		r, err := s.Open(ctx, info)
		if err != nil {
			return err
		}
		n, err := io.Copy(io.Discard, r)
		r.Close()
		if err != nil {
			return err
		}
		el := time.Since(t0)
		fmt.Printf("get %d bytes in %.2fs: %.0f MB/s, peak RSS %d MiB\n", n, el.Seconds(), float64(n)/el.Seconds()/1e6, peakRSS()>>20)
	}
	return nil
}

// peakRSS is this process's peak resident set size (Linux VmHWM), or 0.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
