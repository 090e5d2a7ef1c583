package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/qcow2"
)

// runConvert implements `vmprep convert [-j N] SRC DST`.
func runConvert(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("convert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jobs := fs.Int("j", 0, "chunks converted in parallel (default: 2 per CPU, capped by a 40 MiB buffer budget)")
	quiet := fs.Bool("q", false, "print nothing on success")
	var from string
	const fromUsage = "source format: qcow2 (refuse anything else), raw (copy as is) or auto (detect; no known magic means raw)"
	fs.StringVar(&from, "from", "auto", fromUsage)
	fs.StringVar(&from, "f", "auto", "short for --from")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: vmprep convert [-f|--from qcow2|raw|auto] [-j N] [-q] SRC DST")
		fmt.Fprintln(stderr, "Converts a qcow2 (or raw) disk image to a sparse raw image, identical to")
		fmt.Fprintln(stderr, "`qemu-img convert -f qcow2 -O raw`. DST appears only once complete.")
		fmt.Fprintln(stderr, "Say --from qcow2 for a file that must be qcow2: without it, a qcow2 whose")
		fmt.Fprintln(stderr, "header is damaged has no magic left and is copied as raw.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return 2
	}
	src, dst := fs.Arg(0), fs.Arg(1)
	var opts []qcow2.ConvertOption
	if *jobs > 0 {
		opts = append(opts, qcow2.WithConcurrency(*jobs))
	}
	switch from {
	case "auto":
	case string(qcow2.FormatQcow2), string(qcow2.FormatRaw):
		opts = append(opts, qcow2.WithSourceFormat(qcow2.Format(from)))
	default:
		fmt.Fprintf(stderr, "vmprep convert: --from %q: want qcow2, raw or auto\n", from)
		return 2
	}
	stats, err := qcow2.ConvertToRaw(ctx, src, dst, opts...)
	if err != nil {
		// ConvertToRaw names the file in its errors; cancellation is the exception.
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintf(stderr, "vmprep convert: %s: %v\n", src, err)
		} else {
			fmt.Fprintf(stderr, "vmprep convert: %v\n", err)
		}
		return 1
	}
	if !*quiet {
		fmt.Fprintf(stdout, "%s (%s) -> %s: %d bytes virtual, %d bytes of data\n",
			src, stats.SourceFormat, dst, stats.VirtualSize, stats.DataBytes)
	}
	return 0
}

// inspectReport is what `vmprep inspect --json` prints.
type inspectReport struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual_size"`
	// DiskSize is the file's allocated bytes, as `du` and qemu-img's "disk size" count.
	DiskSize int64        `json:"disk_size"`
	Qcow2    *qcow2Report `json:"qcow2,omitempty"`
}

type qcow2Report struct {
	qcow2.Info
	// AllocatedBytes is the guest data stored in the image (data and
	// compressed clusters), as opposed to zero or unallocated ranges.
	AllocatedBytes int64 `json:"allocated_bytes"`
}

// runInspect implements `vmprep inspect [--json] FILE`.
func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: vmprep inspect [--json] FILE")
		fmt.Fprintln(stderr, "Describes a disk image like `qemu-img info`.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	path := fs.Arg(0)
	rep, err := inspectImage(ctx, path)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep inspect: %s: %v\n", path, err)
		return 1
	}
	if *asJSON {
		return writeJSON(stdout, stderr, "vmprep inspect", rep)
	}
	printInspect(stdout, rep)
	return 0
}

func inspectImage(ctx context.Context, path string) (*inspectReport, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	rep := &inspectReport{Filename: path, VirtualSize: st.Size()}
	rep.DiskSize = content.AllocatedSize(st)
	format, err := qcow2.DetectFormat(f, st.Size())
	if err != nil {
		return nil, err
	}
	rep.Format = string(format)
	switch format {
	case qcow2.FormatRaw:
		return rep, nil
	case qcow2.FormatQcow2:
	default:
		return nil, &qcow2.FormatError{Format: format}
	}
	img, err := qcow2.Open(f, st.Size())
	if err != nil {
		return nil, err
	}
	info := img.Info()
	rep.VirtualSize = info.VirtualSize
	rep.Qcow2 = &qcow2Report{Info: info}
	if rep.Qcow2.AllocatedBytes, err = img.AllocatedBytes(ctx); err != nil {
		return nil, err
	}
	return rep, nil
}

func printInspect(w io.Writer, rep *inspectReport) {
	fmt.Fprintf(w, "image: %s\n", rep.Filename)
	fmt.Fprintf(w, "file format: %s\n", rep.Format)
	fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", humanBytes(rep.VirtualSize), rep.VirtualSize)
	fmt.Fprintf(w, "disk size: %s\n", humanBytes(rep.DiskSize))
	q := rep.Qcow2
	if q == nil {
		return
	}
	compat := "0.10"
	if q.Version == 3 {
		compat = "1.1"
	}
	fmt.Fprintf(w, "cluster_size: %d\n", q.ClusterSize)
	fmt.Fprintf(w, "allocated: %s (%d bytes of guest data)\n", humanBytes(q.AllocatedBytes), q.AllocatedBytes)
	fmt.Fprintf(w, "snapshots: %d\n", q.Snapshots)
	fmt.Fprintln(w, "Format specific information:")
	fmt.Fprintf(w, "    compat: %s (version %d)\n", compat, q.Version)
	fmt.Fprintf(w, "    compression type: %s\n", q.Compression)
	fmt.Fprintf(w, "    lazy refcounts: %t\n", q.LazyRefcounts)
	fmt.Fprintf(w, "    refcount bits: %d\n", q.RefcountBits)
	fmt.Fprintf(w, "    corrupt: false\n") // a corrupt image is refused before this point
	fmt.Fprintf(w, "    extended l2: %t\n", q.ExtendedL2)
	fmt.Fprintf(w, "    dirty: %t\n", q.Dirty)
	fmt.Fprintf(w, "    bitmaps: %t\n", q.Bitmaps)
	fmt.Fprintf(w, "    incompatible features: %#x\n", q.IncompatibleFeatures)
	fmt.Fprintf(w, "    compatible features: %#x\n", q.CompatibleFeatures)
	fmt.Fprintf(w, "    autoclear features: %#x\n", q.AutoclearFeatures)
}

// humanBytes formats n like qemu-img: "1 MiB", "268 KiB", "1.5 GiB".
func humanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	s := fmt.Sprintf("%.3g", v)
	return s + " " + units[i]
}
