// Command qcow2bench converts one image with qcow2.ConvertToRaw, for
// bench/qcow2/run.sh to time against qemu-img convert.
//
//	go build -o /tmp/qcow2bench ./bench/qcow2 && /tmp/qcow2bench [-j N] SRC DST
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/vmprep/vmprep/internal/qcow2"
)

func main() {
	jobs := flag.Int("j", 0, "concurrency (0: default)")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: qcow2bench [-j N] SRC DST")
		os.Exit(2)
	}
	var opts []qcow2.ConvertOption
	if *jobs > 0 {
		opts = append(opts, qcow2.WithConcurrency(*jobs))
	}
	if _, err := qcow2.ConvertToRaw(context.Background(), flag.Arg(0), flag.Arg(1), opts...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
