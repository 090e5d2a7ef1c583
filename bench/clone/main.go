// Command clone-bench times pkg/clone against cp (see run.sh).
//
//	clone-bench mkbase PATH       write a 3.5 GiB-virtual sparse raw disk: 1 MiB of data, 2 MiB of hole, …
//	clone-bench clone SRC DST     clone SRC to DST with pkg/clone; print the method and seconds
package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/vmprep/vmprep/pkg/clone"
)

const (
	virtual = 3584 << 20 // 3.5 GiB, the size of a converted cloud image
	piece   = 1 << 20
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "clone-bench:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 2 && args[0] == "mkbase":
		return mkbase(args[1])
	case len(args) == 3 && args[0] == "clone":
		start := time.Now()
		res, err := clone.Clone(context.Background(), args[1], args[2], clone.Options{})
		if err != nil {
			return err
		}
		fmt.Printf("%s %.6f\n", res.Method, time.Since(start).Seconds())
		return nil
	}
	return fmt.Errorf("usage: clone-bench mkbase PATH | clone SRC DST")
}

// mkbase writes incompressible data in 1 MiB pieces separated by 2 MiB
// holes: about 1.2 GiB of data in 3.5 GiB.
func mkbase(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	r := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, piece)
	for off := int64(0); off < virtual; off += 3 * piece {
		_, _ = r.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
	}
	if err := f.Truncate(virtual); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}
