// Package vbplugin is the Go side of the nbdkit plugin, free of cgo so it can
// be tested on its own: configuration, the lifecycle of the one Volume an
// nbdkit process serves, the NBD operations and the mapping of engine errors
// to errno values. Package main (cmd/nbdkit-plugin) is the thin cgo layer
// that nbdkit calls.
//
// Lifecycle, for `nbdkit -f ... volume=V store=URL wal_dir=DIR`:
//
//	config, config_complete   parse and check parameters (Config)
//	get_ready                 open the store and the volume once (GetReady);
//	                          a missing volume, a WAL held by another process
//	                          or a corrupt WAL fail nbdkit's start-up here,
//	                          before the socket is bound
//	open/close                one Conn per NBD connection, all sharing the
//	                          Volume; when the last connection closes the
//	                          volume is drained to the backend (best effort)
//
// With standby=true (the target of a live migration) get_ready opens the
// volume as a vb.Standby: the current owner keeps it, and this server
// announces itself. The first request that modifies data (write, trim,
// zero) hands the volume over (vb.Standby.Handoff: the owner drains,
// commits and releases, and this server takes ownership with the next
// epoch) and waits for that, up to handoff_timeout for a live owner or
// until a dead owner's lease expires. A handoff that fails fails that
// request (EIO) and leaves the volume with its owner; the next request
// tries again. Reads (read, block status, cache) do not hand over: the
// owner commits everything it holds for each, and the read is served from
// that committed state, so it is never stale (vb.Standby.ReadAt; the
// kernel and udev read a block device as soon as it is attached, long
// before a migration switches over). A flush before the handoff succeeds
// at once: nothing was written here. The NBD handshake and size queries
// touch nothing. A server whose volume was handed over to another fails
// every request from then on (EIO).
//
//	cleanup                   after the last connection ended (also on
//	                          SIGTERM/SIGINT): Close, which flushes and drains
//	                          to the backend; if that fails the data stays in
//	                          the WAL and nbdkit exits non-zero
package vbplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Block size constraints advertised to clients. Any alignment works (the
// engine reads, modifies and writes partial blocks); 4 KiB is the unit that
// avoids that work. The maximum is Config.MaxRequest (Conn.MaxRequest).
const (
	MinBlockSize       = 1
	PreferredBlockSize = vb.BlockSize
)

// drainTimeout bounds the drain after the last connection closes (Close at
// cleanup has its own retries and budget inside the engine).
const drainTimeout = 10 * time.Minute

// Plugin is the state of one nbdkit process: one configuration, one store,
// one open volume shared by every connection.
type Plugin struct {
	Cfg Config
	log *slog.Logger

	store   backend.Store
	cur     atomic.Pointer[vb.Volume] // the open volume (nil while a standby waits)
	standby *vb.Standby               // standby=true: until the handoff
	handMu  sync.Mutex                // serializes handoffs

	storeStats *backend.RequestStats // the store's requests (backend.Count)
	io         ioCounters            // NBD requests served
	metrics    *metricsServer        // serving metrics= (nil without it)

	profile *os.File // CPU profile being written, if any

	conns      atomic.Int64 // open connections
	fencedOnce sync.Once
	drainMu    sync.Mutex // serializes last-connection drains with Cleanup
	closed     bool       // guarded by drainMu
}

// New returns an unconfigured plugin that logs to log.
func New(log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.Default()
	}
	return &Plugin{log: log}
}

// Volume returns the open volume (nil before GetReady, and while a
// standby has not handed over).
func (p *Plugin) Volume() *vb.Volume { return p.cur.Load() }

// volume returns the open volume, handing a standby over first (see the
// package comment).
func (p *Plugin) volume() (*vb.Volume, error) {
	if v := p.cur.Load(); v != nil {
		return v, nil
	}
	p.handMu.Lock()
	defer p.handMu.Unlock()
	if v := p.cur.Load(); v != nil {
		return v, nil
	}
	if p.standby == nil {
		return nil, fmt.Errorf("volume not open")
	}
	start := time.Now()
	p.log.Info("first I/O on the standby: asking the owner to hand the volume over", "volume", p.Cfg.Volume)
	v, err := p.standby.Handoff(context.Background())
	if errors.Is(err, vb.ErrHandedOff) {
		// A read on the standby handed over (its owner did not answer)
		// and is about to adopt the volume.
		p.handMu.Unlock()
		defer p.handMu.Lock()
		for i := 0; i < 500; i++ {
			if v := p.cur.Load(); v != nil {
				return v, nil
			}
			time.Sleep(10 * time.Millisecond)
		}
		return nil, err
	}
	if err != nil {
		p.log.Error("handoff failed: the owner keeps the volume; this request fails and the next one tries again",
			"volume", p.Cfg.Volume, "took", time.Since(start).Round(time.Millisecond), "err", err)
		return nil, err
	}
	p.cur.Store(v)
	p.log.Info("volume handed over: this server owns it now", "volume", p.Cfg.Volume, "epoch", v.Epoch(),
		"pause", time.Since(start).Round(time.Millisecond))
	return v, nil
}

// GetReady opens the store and the volume, creating the volume first when
// size= was given and it does not exist.
func (p *Plugin) GetReady(ctx context.Context) error {
	c := &p.Cfg
	store, err := backend.Open(ctx, c.Store)
	if err != nil {
		return fmt.Errorf("store %s: %v", Redact(c.Store), err)
	}
	store, p.storeStats = backend.Count(store)
	opts := vb.Options{
		WALDir: c.WALDir, ReadOnly: c.ReadOnly, ResumeOnly: c.ResumeOnly,
		CacheBlocks: c.CacheBlocks, CacheMemPercent: c.CacheMemPercent,
		DrainInterval: c.DrainInterval, Logger: p.log,
		LeaseDuration: c.LeaseDuration, Durability: c.Durability,
		Compaction: c.Compaction, ReadCacheBytes: max(c.ReadCache, 0), WALDeferBytes: c.WALDefer, Keys: c.Keys,
		// nbdkit swaps stdin and stdout for /dev/null after get_ready,
		// assuming no other thread opens a file meanwhile: the volume's
		// background work starts in AfterFork.
		DeferBackground: true,
	}
	c.memoryOptions(&opts)
	if c.Standby {
		opts.HandoffTimeout = c.HandoffTimeout
		sb, err := vb.OpenStandby(ctx, store, c.Volume, opts)
		if err != nil {
			store.Close()
			return openError(c, err)
		}
		p.store, p.standby = store, sb
		p.log.Info("volume open in standby: the owner keeps it until the first I/O here hands it over",
			"volume", c.Volume, "size", sb.Size(), "store", Redact(c.Store), "wal_dir", c.WALDir)
		return nil
	}
	vol, err := vb.Open(ctx, store, c.Volume, opts)
	if errors.Is(err, vb.ErrNotFound) && c.Size > 0 && !c.ReadOnly {
		err = vb.CreateVolume(ctx, store, c.Volume, c.Size, vb.CreateOptions{Durability: c.Durability, Keys: c.Keys})
		created := err == nil
		if err == nil || errors.Is(err, vb.ErrExists) { // or created by someone else meanwhile
			vol, err = vb.Open(ctx, store, c.Volume, opts)
		}
		if err == nil && created {
			p.log.Info("created volume", "volume", c.Volume, "size", vol.Size())
		}
	}
	if err != nil {
		store.Close()
		return openError(c, err)
	}
	if c.Size > 0 && (c.Size+vb.BlockSize-1)/vb.BlockSize*vb.BlockSize != vol.Size() {
		p.log.Warn("volume exists with another size; size= ignored", "volume", c.Volume, "size", vol.Size(), "requested", c.Size)
	}
	p.store = store
	p.cur.Store(vol)
	if path := os.Getenv(EnvCPUProfile); path != "" {
		p.startProfile(path)
	}
	st := vol.Stats()
	p.log.Info("volume open", "volume", c.Volume, "size", vol.Size(), "epoch", vol.Epoch(),
		"readonly", c.ReadOnly, "store", Redact(c.Store), "wal_dir", c.WALDir, "replayed_records", st.Replayed)
	return nil
}

// AfterFork starts the volume's background work (WAL writeback, drains).
// nbdkit calls it once it has set up its file descriptors and written its
// pidfile, before it accepts connections.
func (p *Plugin) AfterFork() {
	if v := p.cur.Load(); v != nil {
		v.Start()
		p.startMetrics()
	} else if p.standby != nil {
		p.standby.Start()
		p.startMetrics()
	}
}

// EnvCPUProfile names a file to write a Go CPU profile of the plugin to,
// from get_ready to cleanup (a diagnostic; `go tool pprof` reads it).
const EnvCPUProfile = "VBLOCK_CPUPROFILE"

func (p *Plugin) startProfile(path string) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		p.log.Warn("cannot write CPU profile", "path", path, "err", err)
		return
	}
	p.profile = f
}

func (p *Plugin) stopProfile() {
	if p.profile != nil {
		pprof.StopCPUProfile()
		p.profile.Close()
		p.profile = nil
	}
}

// ExitNotOwner is the exit status of an nbdkit whose resume_only=true open
// was refused because another owner has the volume (vb.ErrNotOwner): its
// supervisor (pkg/driver) tells it from other start-up failures by this
// status, and must not retry as if the failure were passing. 77 is
// sysexits.h's EX_NOPERM; nbdkit itself exits 0 or 1.
const ExitNotOwner = 77

// openError turns an Open failure into one line that says what to do.
func openError(c *Config, err error) error {
	switch {
	case errors.Is(err, vb.ErrNotFound):
		return fmt.Errorf("volume %q not found in %s (create it with `vblock create`, or pass size= to create it here)", c.Volume, Redact(c.Store))
	case errors.Is(err, vb.ErrInvalidName):
		return fmt.Errorf("invalid volume name %q: %v", c.Volume, err)
	case errors.Is(err, vb.ErrInvalidArg):
		return fmt.Errorf("volume %q: %v", c.Volume, err)
	case errors.Is(err, vb.ErrInUse):
		return fmt.Errorf("volume %q is already open by another process using WAL directory %s", c.Volume, c.WALDir)
	case errors.Is(err, vb.ErrNeedsWALDir):
		return fmt.Errorf("volume %q: a writable open needs wal_dir=", c.Volume)
	case errors.Is(err, vb.ErrKey):
		return fmt.Errorf("volume %q: %v (encryption_key_file=); nothing was changed", c.Volume, err)
	case errors.Is(err, vb.ErrCorrupt):
		return fmt.Errorf("volume %q is corrupt, refusing to serve it: %v", c.Volume, err)
	case errors.Is(err, vb.ErrNotOwner):
		// Keep err in the chain: the cgo layer exits with ExitNotOwner.
		return fmt.Errorf("volume %q is not this WAL directory's any more (resume_only=true), not taking it over: %w", c.Volume, err)
	}
	return fmt.Errorf("open volume %q: %v", c.Volume, err)
}

// Cleanup closes the volume: a final flush and drain to the backend. It is
// called once, after the last connection has gone.
func (p *Plugin) Cleanup() error {
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	if p.closed || (p.cur.Load() == nil && p.standby == nil) {
		return nil
	}
	p.closed = true
	p.stopProfile()
	p.stopMetrics()
	p.handMu.Lock() // no handoff under way (there is no I/O left)
	defer p.handMu.Unlock()
	if p.standby != nil {
		p.standby.Close()
	}
	vol := p.cur.Load()
	if vol == nil {
		if p.store != nil {
			p.store.Close()
		}
		p.log.Info("standby closed without a handoff: the owner keeps the volume", "volume", p.Cfg.Volume)
		return nil
	}
	start := time.Now()
	err := vol.Close()
	st := vol.Stats()
	if p.store != nil {
		p.store.Close()
	}
	if errors.Is(err, vb.ErrFenced) {
		return fmt.Errorf("closing volume %q: another owner took it over, so this server's writes since its last commit were not uploaded: %v", p.Cfg.Volume, err)
	}
	if err != nil {
		return fmt.Errorf("closing volume %q: %v (the data is safe in the WAL at %s; serve the volume again on this node to retry)", p.Cfg.Volume, err, p.Cfg.WALDir)
	}
	msg := "volume closed and drained"
	if p.Cfg.ReadOnly {
		msg = "volume closed (read-only)"
	}
	p.log.Info(msg, "volume", p.Cfg.Volume, "took", time.Since(start).Round(time.Millisecond),
		"writes", st.Writes, "reads", st.Reads, "flushes", st.Flushes, "drains", st.Drains, "bytes_drained", st.BytesDrained,
		"wal_bytes_written", st.WALBytesWritten, "wal_bytes_skipped", st.WALBytesSkipped,
		"gc_runs", st.GCRuns, "gc_bytes_read", st.GCBytesRead, "gc_bytes_written", st.GCBytesWritten, "gc_bytes_reclaimed", st.GCBytesReclaimed)
	return nil
}

// Conn is one NBD connection.
type Conn struct {
	p        *Plugin
	readonly bool
}

// Open starts a connection. readonly is nbdkit's view (-r or a read-only
// export); a readonly= volume is read-only for every connection.
func (p *Plugin) Open(readonly bool) (*Conn, error) {
	if v := p.cur.Load(); v != nil {
		v.Start() // normally done by AfterFork already
	} else if p.standby != nil {
		p.standby.Start()
	} else {
		return nil, fmt.Errorf("volume not open")
	}
	if n := p.conns.Add(1); p.Cfg.Memory > 0 && n > int64(p.Cfg.Connections) {
		// Served all the same (refusing could break a device's
		// reconnection), but each connection's nbdkit threads hold
		// request buffers the share did not budget for.
		p.log.Warn("more connections than memory= budgets request buffers for (connections=)", "volume", p.Cfg.Volume,
			"connections", n, "budgeted", p.Cfg.Connections, "bytes_each", RequestBuffers(1, p.Cfg.Threads, p.Cfg.MaxRequest))
	}
	return &Conn{p: p, readonly: readonly || p.Cfg.ReadOnly}, nil
}

// Close ends a connection. When it was the last one, the volume is drained
// so the backend holds everything written so far; failures are logged (the
// data is in memory and the WAL, and Cleanup will try again).
func (c *Conn) Close() {
	p := c.p
	if p.conns.Add(-1) != 0 || p.Cfg.ReadOnly {
		return
	}
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	if p.closed || p.conns.Load() != 0 {
		return
	}
	vol := p.cur.Load()
	if vol == nil {
		return // a standby: nothing of its own to drain
	}
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := vol.Drain(ctx); err != nil {
		p.noteErr(err)
		p.log.Warn("drain after the last connection closed failed; will retry", "volume", p.Cfg.Volume, "err", err)
	}
}

// MaxRequest is the largest read or write request the connection
// advertises (the block size maximum; see memory.go).
func (c *Conn) MaxRequest() int64 { return c.p.Cfg.MaxRequest }

// CanWrite reports whether this connection may write.
func (c *Conn) CanWrite() bool { return !c.readonly }

// Size is the size the export advertises: the volume's, or virtual_size=
// when that is larger. A client's device can then grow while attached when
// the volume grows (pkg/attach: nbdfuse learns the export size once; the
// device itself is limited to the volume's size). Between the volume's end
// and the virtual size, reads return zeros, zero and trim do nothing and
// writes fail with ENOSPC.
func (c *Conn) Size() int64 { return max(c.p.size(), c.p.Cfg.VirtualSize) }

// size is the volume's size (the standby's view before a handoff).
func (p *Plugin) size() int64 {
	if v := p.cur.Load(); v != nil {
		return v.Size()
	}
	if p.standby != nil {
		return p.standby.Size()
	}
	return 0
}

// adopt makes v, handed over by a read on the standby, the open volume.
func (p *Plugin) adopt(v *vb.Volume) {
	p.handMu.Lock()
	defer p.handMu.Unlock()
	if p.cur.Load() == nil {
		p.cur.Store(v)
		p.log.Info("volume handed over on a read (the owner did not answer): this server owns it now", "volume", p.Cfg.Volume, "epoch", v.Epoch())
	}
}

// reader is what reads go to: the open volume, or the standby's view.
type reader struct {
	vol *vb.Volume
	sb  *vb.Standby
	p   *Plugin
}

func (p *Plugin) reader() (reader, error) {
	if v := p.cur.Load(); v != nil {
		return reader{vol: v}, nil
	}
	if p.standby == nil {
		return reader{}, fmt.Errorf("volume not open")
	}
	return reader{sb: p.standby, p: p}, nil
}

func (r reader) size() int64 {
	if r.vol != nil {
		return r.vol.Size()
	}
	return r.sb.Size()
}

func (r reader) ReadAt(buf []byte, off int64) (int, error) {
	if r.vol != nil {
		return r.vol.ReadAt(buf, off)
	}
	n, v, err := r.sb.ReadAt(context.Background(), buf, off)
	if v != nil {
		r.p.adopt(v)
	}
	if errors.Is(err, vb.ErrHandedOff) {
		vol, verr := r.p.volume()
		if verr != nil {
			return 0, verr
		}
		return vol.ReadAt(buf, off)
	}
	return n, err
}

func (r reader) Extents(off, length int64) ([]vb.Extent, error) {
	if r.vol != nil {
		return r.vol.Extents(off, length)
	}
	ext, v, err := r.sb.Extents(context.Background(), off, length)
	if v != nil {
		r.p.adopt(v)
	}
	if errors.Is(err, vb.ErrHandedOff) {
		vol, verr := r.p.volume()
		if verr != nil {
			return nil, verr
		}
		return vol.Extents(off, length)
	}
	return ext, err
}

// Pread fills buf from off; past the volume's end (inside the virtual
// size) it reads zeros.
func (c *Conn) Pread(buf []byte, off uint64) error {
	err := c.pread(buf, off)
	c.p.io.done(ioRead, len(buf), err)
	return err
}

func (c *Conn) pread(buf []byte, off uint64) error {
	if off > 1<<62 {
		return fmt.Errorf("%w: offset %d", vb.ErrOutOfRange, off)
	}
	vol, err := c.p.reader()
	if err != nil {
		return c.p.noteErr(err)
	}
	if c.p.Cfg.VirtualSize > 0 {
		size := uint64(vol.size())
		if off+uint64(len(buf)) > size && off+uint64(len(buf)) <= uint64(c.Size()) {
			in := uint64(0)
			if off < size {
				in = size - off
			}
			clear(buf[in:])
			if in == 0 {
				return nil
			}
			buf = buf[:in]
		}
	}
	_, err = vol.ReadAt(buf, int64(off))
	return c.p.noteErr(err)
}

// Pwrite writes buf at off; with fua it returns only once the write is
// durable.
func (c *Conn) Pwrite(buf []byte, off uint64, fua bool) error {
	err := c.pwrite(buf, off, fua)
	c.p.io.done(ioWrite, len(buf), err)
	return err
}

func (c *Conn) pwrite(buf []byte, off uint64, fua bool) error {
	if off > 1<<62 {
		return fmt.Errorf("%w: offset %d", vb.ErrOutOfRange, off)
	}
	vol, err := c.p.volume()
	if err != nil {
		return c.p.noteErr(err)
	}
	if _, err := vol.WriteAt(buf, int64(off)); err != nil {
		return c.p.noteErr(err)
	}
	if fua {
		return c.p.noteErr(vol.Flush())
	}
	return nil
}

// Flush makes every write completed before it, on any connection, durable.
func (c *Conn) Flush() error {
	var err error
	if vol := c.p.cur.Load(); vol != nil {
		err = c.p.noteErr(vol.Flush())
	} else if c.p.standby == nil {
		err = fmt.Errorf("volume not open")
	} // else a standby: nothing written here to make durable
	c.p.io.done(ioFlush, 0, err)
	return err
}

// Trim discards [off, off+n): the range reads back as zeros and its whole
// blocks stop using space once drained.
func (c *Conn) Trim(n uint32, off uint64, fua bool) error {
	err := c.zero(n, off, fua)
	c.p.io.done(ioTrim, int(n), err)
	return err
}

// Zero makes [off, off+n) read as zeros. It is always fast: whole blocks are
// a metadata operation and at most two partial blocks are written, so
// may_trim and fast_zero need no special handling.
func (c *Conn) Zero(n uint32, off uint64, fua bool) error {
	err := c.zero(n, off, fua)
	c.p.io.done(ioZero, int(n), err)
	return err
}

func (c *Conn) zero(n uint32, off uint64, fua bool) error {
	if off > 1<<62 {
		return fmt.Errorf("%w: offset %d", vb.ErrOutOfRange, off)
	}
	vol, err := c.p.volume()
	if err != nil {
		return c.p.noteErr(err)
	}
	if size := uint64(vol.Size()); c.p.Cfg.VirtualSize > 0 && off+uint64(n) > size && off+uint64(n) <= uint64(c.Size()) {
		if off >= size {
			return nil // past the volume's end: already zeros
		}
		n = uint32(size - off)
	}
	if err := vol.Zero(int64(off), int64(n)); err != nil {
		return c.p.noteErr(err)
	}
	if fua {
		return c.p.noteErr(vol.Flush())
	}
	return nil
}

// extentWindow bounds how much address space one Extents call examines, so
// a query over a huge range answers quickly; NBD lets a server describe
// less than was asked, as long as it describes something.
const extentWindow = 1 << 30

// Extents reports data and hole runs from off, for at most n bytes, calling
// add for each in order. With reqOne, one extent is enough.
func (c *Conn) Extents(n uint32, off uint64, reqOne bool, add func(off, length uint64, hole bool) error) error {
	vol, err := c.p.reader()
	if err != nil {
		return c.p.noteErr(err)
	}
	size := uint64(vol.size())
	if virt := uint64(c.Size()); off >= size && off < virt {
		return add(off, min(uint64(n), virt-off), true) // past the volume's end: a hole
	}
	if off >= size {
		return fmt.Errorf("%w: extents at %d of %d bytes", vb.ErrOutOfRange, off, size)
	}
	length := min(uint64(n), size-off, extentWindow)
	ext, err := vol.Extents(int64(off), int64(length))
	if err != nil {
		return c.p.noteErr(err)
	}
	for _, e := range ext {
		if err := add(uint64(e.Offset), uint64(e.Length), e.Zero); err != nil {
			return err
		}
		if reqOne {
			break
		}
	}
	return nil
}

var cacheBufs = sync.Pool{New: func() any { b := make([]byte, 4<<20); return &b }}

// Cache reads [off, off+n) so later reads of it are served from memory.
func (c *Conn) Cache(n uint32, off uint64) error {
	bp := cacheBufs.Get().(*[]byte)
	defer cacheBufs.Put(bp)
	buf := *bp
	for n > 0 {
		k := min(uint32(len(buf)), n)
		if err := c.pread(buf[:k], off); err != nil {
			return err
		}
		n -= k
		off += uint64(k)
	}
	return nil
}

// noteErr logs the first sign of fencing (or of a release to another
// open) loudly, and every flush refused for want of a valid lease, and
// passes err through.
func (p *Plugin) noteErr(err error) error {
	switch {
	case err == nil:
	case errors.Is(err, vb.ErrFenced):
		p.fencedOnce.Do(func() {
			p.log.Error("volume fenced or released: another owner has it; this server now fails every write with EIO", "volume", p.Cfg.Volume, "err", err)
		})
	case errors.Is(err, vb.ErrLeaseExpired):
		p.log.Warn("flush refused: the ownership lease could not be renewed in time (store unreachable, or this process was paused); the data stays in the WAL", "volume", p.Cfg.Volume, "err", err)
	}
	return err
}

// Errno maps an error from the engine to the errno nbdkit sends the client.
// write says whether the failed request modifies data (past-the-end writes
// are ENOSPC, as NBD asks; past-the-end reads EINVAL).
func Errno(err error, write bool) syscall.Errno {
	var en syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.Is(err, vb.ErrOutOfRange):
		if write {
			return syscall.ENOSPC
		}
		return syscall.EINVAL
	case errors.Is(err, vb.ErrInvalidArg):
		return syscall.EINVAL
	case errors.Is(err, vb.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, vb.ErrClosed):
		return syscall.ESHUTDOWN
	case errors.Is(err, vb.ErrFenced), errors.Is(err, vb.ErrCorrupt), errors.Is(err, vb.ErrBackendState):
		return syscall.EIO
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return syscall.EIO
	case errors.As(err, &en):
		return en
	}
	return syscall.EIO
}

// Redact shows a store URL without credentials or query parameters.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable store URL>"
	}
	u.User = nil
	u.RawQuery = ""
	u.Fragment = ""
	return u.String()
}
