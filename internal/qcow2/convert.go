package qcow2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/writeback"
)

// ConvertStats summarises a conversion.
type ConvertStats struct {
	SourceFormat Format // FormatQcow2 or FormatRaw
	VirtualSize  int64  // size of the raw output
	DataBytes    int64  // bytes written; the rest of the output is holes
}

// ConvertOption configures ConvertToRaw.
type ConvertOption func(*convertConfig)

type convertConfig struct {
	progress   func(done, total int64)
	workers    int
	chunkBytes int64
	format     Format // declared source format; "" detects it
	// beforePublish, if set, runs once the output is complete and before it
	// is published; its error aborts the publication.
	beforePublish func(ctx context.Context) error
	// written, if set, is called with the output's size before the
	// conversion writes, and returns what gets every run of data written.
	written func(size int64) func(off int64, data []byte)
}

// WithWritten makes the conversion call start with the output's size
// before it writes, and then hand the function start returns every run of
// non-zero 4 KiB blocks it writes, in order of offset, once written (the
// rest of the output is holes), from one goroutine; it must not keep the
// data. It lets the caller digest the output without reading it back
// (content.SparseDigest). Chunks are then written in order.
func WithWritten(start func(size int64) func(off int64, data []byte)) ConvertOption {
	return func(c *convertConfig) { c.written = start }
}

// WithBeforePublish makes the conversion call check once the output is
// written and before it is renamed into place: an error from
// check leaves nothing at the destination and removes the temporary file.
// A conversion of a source still being verified (see ConvertReaderToRaw)
// waits there for the verdict.
func WithBeforePublish(check func(ctx context.Context) error) ConvertOption {
	return func(c *convertConfig) { c.beforePublish = check }
}

// WithSourceFormat declares the source's format, as qemu-img's -f does.
// FormatQcow2 refuses anything else with a *FormatError: a file that should
// be qcow2 but whose magic is broken is not copied as raw. FormatRaw copies
// the bytes as they are, whatever magic they start with. Without this option
// the format is detected and a file with no known magic is copied as raw.
func WithSourceFormat(f Format) ConvertOption {
	return func(c *convertConfig) { c.format = f }
}

// WithProgress registers fn to be called with the number of guest bytes
// processed so far and the virtual size. Calls come from one goroutine,
// done never decreases, and the last call (on success) has done == total.
func WithProgress(fn func(done, total int64)) ConvertOption {
	return func(c *convertConfig) { c.progress = fn }
}

// WithConcurrency sets how many chunks are read, decompressed and written in
// parallel (default: twice GOMAXPROCS, at most 16). Each worker needs
// about 2 MiB, plus 3 × the cluster size for compressed images; the count is
// capped so that workers stay within a 40 MiB budget whatever is asked.
func WithConcurrency(n int) ConvertOption {
	return func(c *convertConfig) {
		if n > 0 {
			c.workers = min(n, 64)
		}
	}
}

// chunk is the guest range one worker handles at a time; it is a multiple of
// every cluster size (max 2 MiB) and of the 4 KiB hole granularity.
const defaultChunk = 2 << 20

// holeBlock is the granularity at which zeros become holes, as with qemu-img.
const holeBlock = 4096

var zeroBlock [holeBlock]byte

// ConvertToRaw converts the qcow2 (or raw) image at srcPath to a sparse raw
// image at dstPath, byte-identical to `qemu-img convert -f qcow2 -O raw`.
// The output is written to a temporary file in dstPath's directory, fsynced
// and renamed into place; on error nothing is left at dstPath (an existing
// file there is untouched) and the temporary file is removed. The one
// exception is a failure of the final directory fsync: the complete file is
// then in place and the error says the rename may not be durable yet.
func ConvertToRaw(ctx context.Context, srcPath, dstPath string, opts ...ConvertOption) (stats ConvertStats, err error) {
	src, err := os.Open(srcPath)
	if err != nil {
		return stats, err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return stats, err
	}
	if !st.Mode().IsRegular() {
		return stats, fmt.Errorf("%s: not a regular file", srcPath)
	}
	return ConvertReaderToRaw(ctx, src, st.Size(), srcPath, dstPath, opts...)
}

// ConvertReaderToRaw is ConvertToRaw for a source read through src, of size
// bytes, named name in errors. The source may still be arriving: src's reads
// may wait for their bytes (in file order, most of a qcow2 written by
// qemu-img converts as it arrives). size bounds every offset taken from the
// image's tables, as for a complete file; a source that ends short fails
// on the read that passes its end.
func ConvertReaderToRaw(ctx context.Context, src io.ReaderAt, size int64, name, dstPath string, opts ...ConvertOption) (stats ConvertStats, err error) {
	// Twice the CPUs: a worker blocked in pread/pwrite leaves its CPU to
	// another (measured: 4 workers beat 2 on 2 cores for every image kind).
	cfg := convertConfig{workers: min(2*runtime.GOMAXPROCS(0), 16), chunkBytes: defaultChunk}
	for _, o := range opts {
		o(&cfg)
	}
	format, err := DetectFormat(src, size)
	if err != nil {
		return stats, fmt.Errorf("%s: %w", name, err)
	}
	switch cfg.format {
	case "", format:
	case FormatRaw:
		format = FormatRaw // declared raw: a magic at its start is guest data
	case FormatQcow2:
		return stats, fmt.Errorf("%s: %w", name, &FormatError{Format: format})
	default:
		return stats, fmt.Errorf("%s: cannot convert from %q: the source format must be qcow2 or raw", name, cfg.format)
	}
	var img *Image
	switch format {
	case FormatQcow2:
		if img, err = Open(src, size); err != nil {
			return stats, fmt.Errorf("%s: %w", name, err)
		}
		stats.VirtualSize = img.Size()
	case FormatRaw:
		stats.VirtualSize = size
	default:
		return stats, fmt.Errorf("%s: %w", name, &FormatError{Format: format})
	}
	stats.SourceFormat = format

	err = atomicfile.Write(dstPath, 0o644, func(tmp *os.File) error {
		if err := tmp.Truncate(stats.VirtualSize); err != nil {
			if errors.Is(err, syscall.EFBIG) {
				return fmt.Errorf("%s: the raw output would be %d bytes, larger than the file system of %s allows: %w",
					name, stats.VirtualSize, filepath.Dir(dstPath), err)
			}
			return err
		}
		cfg.workers = min(cfg.workers, maxWorkers(img, cfg.chunkBytes))
		e := &engine{cfg: cfg, img: img, src: src, dst: tmp, size: stats.VirtualSize}
		e.writeback = writeback.Start(tmp, writebackEvery)
		defer e.writeback.Close()
		var err error
		stats.DataBytes, err = e.run(ctx)
		e.writeback.Close() // no kicks once the file is fsynced and closed
		if err != nil && img != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%s: %w", name, err)
		}
		if err == nil && cfg.beforePublish != nil {
			err = cfg.beforePublish(ctx)
		}
		return err
	})
	return stats, err
}

// workerBudget bounds the buffers of all workers together, keeping the
// process well inside 64 MiB RSS for any image.
const workerBudget = 40 << 20

// spareBuffers is how many chunk buffers there are beyond one per worker:
// filled chunks queue for the writer while the workers go on.
const spareBuffers = 2

// maxWorkers is how many workers fit in workerBudget: each holds a chunk
// buffer, room for 2 clusters of compressed input and a decoder window of
// about a cluster; the spare chunk buffers come off the budget first.
func maxWorkers(img *Image, chunk int64) int {
	per, buf := chunk, chunk
	if img != nil {
		// Any qcow2 image may hold compressed clusters.
		buf = max(chunk, img.clusterSize)
		per = buf + 3*img.clusterSize
	}
	return max(1, int((workerBudget-spareBuffers*buf)/per))
}

// engine converts chunks in parallel: one producer maps guest ranges,
// workers read and decompress them into chunk buffers and find their
// non-zero 4 KiB blocks, and one writer writes those. A single writer: the kernel
// serialises buffered writes to one file on its inode lock anyway;
// concurrent writers spun on it (perf: a quarter of all CPU in
// rwsem_spin_on_owner), and writers taking turns on a mutex left the file
// idle at every hand-over, waiting for the next writer's thread to be
// scheduled — on a busy machine most of the time.
type engine struct {
	cfg       convertConfig
	img       *Image // nil for raw input
	src       io.ReaderAt
	dst       io.WriterAt
	size      int64
	writeback *writeback.Writeback // optional: starts flushing written data early
}

type job struct {
	seq    int64     // among the jobs, from 0: the order they are written in
	off    int64     // guest byte offset (multiple of the chunk size)
	length int64     // guest bytes, ≤ chunk size
	ms     []mapping // qcow2: one per cluster
}

// chunkBuf is one chunk's guest data on its way from a worker to the writer.
type chunkBuf struct {
	job
	data   []byte
	filled []bool    // qcow2: per cluster, whether it may hold non-zero bytes
	runs   []dataRun // what the writer writes: the non-zero blocks of data
}

func (e *engine) run(parent context.Context) (int64, error) {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)

	workers := e.cfg.workers
	jobs := make(chan job, workers)
	skipped := make(chan int64, 4*workers) // all-zero chunks, straight from the producer
	nbuf := workers + spareBuffers
	free := make(chan *chunkBuf, nbuf)
	for range nbuf {
		free <- e.newChunkBuf()
	}
	// Never full: there are only nbuf buffers.
	ready := make(chan *chunkBuf, nbuf)

	go func() {
		defer close(skipped)
		defer close(jobs)
		if err := e.produce(ctx, jobs, skipped); err != nil {
			cancel(err)
		}
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dec := newDecoder(e.img)
			defer dec.close()
			for {
				// The buffer first, then the job: the earliest job not yet
				// written always has a buffer, so an in-order writer holding
				// later chunks never waits for one that cannot get a buffer.
				var cb *chunkBuf
				select {
				case cb = <-free:
				case <-ctx.Done():
					for range jobs {
						// drain so the producer never blocks
					}
					return
				}
				j, ok := <-jobs
				if !ok {
					free <- cb
					return
				}
				if ctx.Err() != nil {
					free <- cb
					continue
				}
				cb.job = j
				if err := e.fill(dec, cb); err != nil {
					cancel(err)
					free <- cb
					continue
				}
				e.findRuns(cb)
				ready <- cb
			}
		}()
	}
	go func() {
		wg.Wait()
		close(ready)
	}()

	// The writer: this goroutine. It also reports progress, so calls come
	// from one goroutine and count only what is written.
	var done, written int64
	report := func(n int64) {
		done += n
		if e.cfg.progress != nil && ctx.Err() == nil {
			e.cfg.progress(done, e.size)
		}
	}
	// With WithWritten, chunks are written in order (pending holds those
	// that came early) and handed on to the digester goroutine, which
	// frees their buffers.
	pending := map[int64]*chunkBuf{}
	var nextSeq int64
	var digested chan *chunkBuf
	var digester sync.WaitGroup
	if e.cfg.written != nil {
		digest := e.cfg.written(e.size)
		digested = make(chan *chunkBuf, nbuf) // never full: nbuf buffers
		digester.Add(1)
		go func() {
			defer digester.Done()
			for cb := range digested {
				if ctx.Err() == nil {
					for _, r := range cb.runs {
						digest(cb.off+r.start, cb.data[r.start:r.end])
					}
				}
				free <- cb
			}
		}()
	}
	write := func(cb *chunkBuf) {
		if ctx.Err() == nil {
			n, err := e.writeChunk(cb)
			if err != nil {
				cancel(err)
			} else {
				written += n
				report(cb.length)
			}
		}
		if digested != nil {
			digested <- cb
		} else {
			free <- cb
		}
	}
	for ready != nil || skipped != nil {
		select {
		case cb, ok := <-ready:
			if !ok {
				ready = nil
				continue
			}
			if digested == nil {
				write(cb)
				continue
			}
			pending[cb.seq] = cb
			for {
				next, ok := pending[nextSeq]
				if !ok {
					break
				}
				delete(pending, nextSeq)
				nextSeq++
				write(next)
			}
		case n, ok := <-skipped:
			if !ok {
				skipped = nil
				continue
			}
			report(n)
		}
	}
	if digested != nil {
		close(digested)
		digester.Wait()
		if len(pending) > 0 && ctx.Err() == nil {
			return 0, fmt.Errorf("internal error: %d chunks were never written in order", len(pending))
		}
	}
	if err := context.Cause(ctx); err != nil {
		return 0, err
	}
	if e.cfg.progress != nil && done == 0 {
		e.cfg.progress(0, e.size) // empty image: still report completion once
	}
	return written, nil
}

// produce emits jobs for every chunk holding file data and reports skipped
// (all-zero) chunks' lengths to skipped.
func (e *engine) produce(ctx context.Context, jobs chan<- job, skipped chan<- int64) error {
	chunk := e.cfg.chunkBytes
	var l2buf []byte
	var perChunk int64
	var ms []mapping
	if e.img != nil {
		cs := e.img.clusterSize
		chunk = max(chunk, cs)
		perChunk = chunk / cs
		l2buf = make([]byte, perChunk*e.img.entryBytes)
		ms = make([]mapping, perChunk)
	}
	var seq int64
	for off := int64(0); off < e.size; off += chunk {
		if err := ctx.Err(); err != nil {
			return nil // the cause is already recorded
		}
		length := min(chunk, e.size-off)
		j := job{seq: seq, off: off, length: length}
		if e.img != nil {
			// A whole unallocated L1 range is skipped in one step, so huge
			// empty images cost nothing.
			perL1 := e.img.clusterSize * e.img.l2Entries
			if perL1 >= chunk && e.img.l1[off/perL1] == 0 {
				skip := min(off/perL1*perL1+perL1, e.size) - off
				select {
				case skipped <- skip:
				case <-ctx.Done():
				}
				off += skip - chunk
				continue
			}
			first := off >> e.img.clusterBits
			n := (length + e.img.clusterSize - 1) >> e.img.clusterBits
			if err := e.img.mapClusters(l2buf, first, ms[:n]); err != nil {
				return err
			}
			raw := false
			for _, m := range ms[:n] {
				raw = raw || m.hasRaw
			}
			if !raw {
				select {
				case skipped <- length:
				case <-ctx.Done():
				}
				continue
			}
			j.ms = append([]mapping(nil), ms[:n]...)
		}
		select {
		case jobs <- j:
			seq++
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

func (e *engine) newChunkBuf() *chunkBuf {
	chunk := e.cfg.chunkBytes
	cb := &chunkBuf{}
	if e.img != nil {
		chunk = max(chunk, e.img.clusterSize)
		cb.filled = make([]bool, chunk/e.img.clusterSize)
	}
	cb.data = make([]byte, chunk)
	return cb
}

// fill reads (and decompresses) cb's chunk into cb.data.
func (e *engine) fill(dec *decoder, cb *chunkBuf) error {
	if e.img == nil {
		b := cb.data[:cb.length]
		if n, err := e.src.ReadAt(b, cb.off); n < len(b) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read raw source at %#x: %w", cb.off, err)
		}
		return nil
	}
	cs := e.img.clusterSize
	n := len(cb.ms)
	// findRuns looks at no byte of a cluster filled marks false unless
	// clusters are smaller than its blocks: only then must they be zeros.
	clearZero := cs < holeBlock
	return dec.fill(cb.data[:int64(n)*cs], cb.off>>e.img.clusterBits, cb.ms, cb.filled[:n], clearZero)
}

// writeChunk writes cb's runs and tells the writeback what it
// wrote from compressed chunks. Early writeback pays off only there:
// decompression keeps the CPUs busy while the disk works. Copying
// uncompressed data is I/O bound and measured slower with early writeback,
// so it is left to the final fsync.
func (e *engine) writeChunk(cb *chunkBuf) (int64, error) {
	var n int64
	for _, r := range cb.runs {
		if _, err := e.dst.WriteAt(cb.data[r.start:r.end], cb.off+r.start); err != nil {
			return n, fmt.Errorf("write output at %#x: %w", cb.off+r.start, err)
		}
		n += r.end - r.start
	}
	if n > 0 && e.writeback != nil && hasCompressed(cb.ms) {
		e.writeback.Wrote(n)
	}
	return n, nil
}

func hasCompressed(ms []mapping) bool {
	for _, m := range ms {
		if m.kind == ExtentCompressed {
			return true
		}
	}
	return false
}

// dataRun is a range [start, end) of a chunk buffer to write.
type dataRun struct{ start, end int64 }

// findRuns sets cb.runs to the ranges of cb's data whose 4 KiB blocks are
// not all zero, coalescing neighbours. cb.filled (per cluster) lets it skip
// clusters known to be zero without scanning them. The workers do this, not
// the writer: the writer is the critical path (pwrites to one file are
// serialised by its inode lock), the scan is not.
func (e *engine) findRuns(cb *chunkBuf) {
	var cs int64 = 1
	var filled []bool
	if e.img != nil {
		cs = e.img.clusterSize
		filled = cb.filled[:len(cb.ms)]
	}
	b := cb.data[:cb.length]
	cb.runs = cb.runs[:0]
	runStart := int64(-1)
	total := int64(len(b))
	for lo := int64(0); lo < total; lo += holeBlock {
		hi := min(lo+holeBlock, total)
		data := filled == nil
		for c := lo / cs; !data && c <= (hi-1)/cs; c++ {
			data = filled[c]
		}
		if data && bytes.Equal(b[lo:hi], zeroBlock[:hi-lo]) {
			data = false
		}
		switch {
		case data && runStart < 0:
			runStart = lo
		case !data && runStart >= 0:
			cb.runs = append(cb.runs, dataRun{runStart, lo})
			runStart = -1
		}
	}
	if runStart >= 0 {
		cb.runs = append(cb.runs, dataRun{runStart, total})
	}
}

// writebackEvery is how much newly written data triggers a writeback kick.
const writebackEvery = 64 << 20
