// Command qcow2bench converts one image with qcow2.ConvertToRaw, for
// bench/qcow2/run.sh to time against qemu-img convert.
//
//	go build -o /tmp/qcow2bench ./bench/qcow2 && /tmp/qcow2bench [-j N] [-cpuprofile F] SRC DST
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/vmprep/vmprep/internal/qcow2"
)

func main() {
	jobs := flag.Int("j", 0, "concurrency (0: default)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the conversion to this file")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: qcow2bench [-j N] [-cpuprofile F] SRC DST")
		os.Exit(2)
	}
	var opts []qcow2.ConvertOption
	if *jobs > 0 {
		opts = append(opts, qcow2.WithConcurrency(*jobs))
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	if _, err := qcow2.ConvertToRaw(context.Background(), flag.Arg(0), flag.Arg(1), opts...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1) // a failed run's profile is of no use
	}
}
