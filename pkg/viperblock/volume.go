package viperblock

import (
	"context"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/blockmap"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/cache"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/chunk"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/diskcache"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/manifest"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// BlockSize is the volume block size.
const BlockSize = 4096

const nShards = 16

// Sentinel errors. The engine wraps them with detail; callers test with
// errors.Is and map them to their own protocol's codes.
var (
	ErrNotFound     = errors.New("viperblock: volume not found")
	ErrExists       = errors.New("viperblock: volume already exists")
	ErrInvalidName  = errors.New("viperblock: invalid volume name")
	ErrInvalidArg   = errors.New("viperblock: invalid argument")
	ErrOutOfRange   = errors.New("viperblock: I/O past the end of the volume")
	ErrReadOnly     = errors.New("viperblock: volume is read-only")
	ErrClosed       = errors.New("viperblock: volume is closed")
	ErrFenced       = errors.New("viperblock: volume fenced: another owner opened it")
	ErrInUse        = errors.New("viperblock: volume is in use")
	ErrCorrupt      = errors.New("viperblock: corrupt data")
	ErrNeedsWALDir  = errors.New("viperblock: a writable volume needs a WAL directory")
	ErrBackendState = errors.New("viperblock: backend holds an inconsistent state")
	// ErrNotOwner: a resume-only open (Options.ResumeOnly) found that its
	// WAL directory does not own the volume: another owner has taken it
	// over since (or this directory never owned it), and the open took
	// nothing. It is a kind of ErrFenced, so a caller that tests for
	// ErrFenced treats it as "another owner has the volume".
	ErrNotOwner = fmt.Errorf("%w (a resume-only open refused: its WAL directory is not the owner's)", ErrFenced)
)

// Options configure a volume. The zero value is usable for a read-only open;
// a writable open needs WALDir.
type Options struct {
	// WALDir is the node-local directory holding the write-ahead log; the
	// volume's log lives in WALDir/<name>.
	WALDir string
	// FS is the filesystem for the WAL (default vfs.Default).
	FS vfs.FS
	// ReadOnly opens without taking ownership; writes fail with ErrReadOnly.
	ReadOnly bool
	// ResumeOnly makes a writable Open take ownership only back from its
	// own WAL directory: only if the OWNER file there owns the manifest
	// the open read (its current or pending pair: nobody else has owned the
	// volume since this WAL was written; see owner.go). Otherwise Open
	// fails with ErrNotOwner and leaves the store and the WAL as they were.
	// The epoch bump is a compare-and-swap on the manifest version the open
	// read, so a takeover between that read and the bump fails the swap,
	// which (once the manifest read back shows another state, see
	// "Commits with an unknown outcome") is ErrNotOwner too. A supervisor
	// that reopens a volume on its own initiative (restarting a crashed
	// server) sets it, so the reopen can never steal the volume from an
	// owner that took it over meanwhile. A volume never opened in WALDir
	// (no OWNER file) is refused.
	ResumeOnly bool
	// CacheBlocks sizes the read cache in blocks. On a store whose reads
	// the node's page cache serves (backend.IsLocal: the file store) there
	// is no read cache nor read-ahead unless CacheBlocks or
	// CacheMemPercent asks for one. Otherwise, if zero, CacheMemPercent
	// of system memory is used; if both are zero, 64 MiB. Negative: no cache.
	CacheBlocks     int
	CacheMemPercent float64
	// DrainInterval bounds how long written data waits before it is drained
	// to the backend (default 5 s): the loss window when a node dies.
	DrainInterval time.Duration
	// DrainBytes starts a drain when this much is pending (default 64 MiB).
	DrainBytes int64
	// MaxPendingBytes is the most WAL data held before writers wait for a
	// drain (default 512 MiB). Pending data is held in memory as well.
	// Writers wait, never fail, at the limit; it is exceeded by at most one
	// admission step (see throttle), so a request larger than the limit
	// still goes through, a step at a time.
	MaxPendingBytes int64
	// WALDeferBytes bounds the written data whose WAL write waits (default
	// 7/8 of MaxPendingBytes; negative: none waits). A larger bound skips
	// more WAL writes under sustained writes faster than the drains (a
	// 2 GiB durable write wrote 0.26-0.35 GB to the WAL with the bound at
	// 15/16 of the limit, 0.6-0.7 GB at half) and lets a FLUSH after such a
	// burst write up to the bound (about a second at 450 MiB on a disk
	// writing 500 MB/s, as a filesystem's fsync after the same burst does).
	// Written data stays in memory until a Flush (or FUA) asks for it to
	// be durable or a drain commits it; data a drain commits first is
	// never written to the WAL. The background writeback writes ahead of
	// time only what exceeds this bound, newest first, so a Flush has at
	// most about this much to write besides what the writeback has not
	// caught up with (see log.go, "Deferred WAL writes").
	WALDeferBytes int64
	// SlabPoolBytes bounds the retired WAL slabs the volume keeps for
	// reuse (default: MaxPendingBytes plus a quarter; negative: none).
	SlabPoolBytes int64
	// MemoryBytes, when positive, is the memory the volume's data may use:
	// pending writes with their slabs and pool, the read cache, the chunk
	// index cache and the drain's chunk buffers. Options left zero among
	// MaxPendingBytes, DrainBytes, SlabPoolBytes, UploadConcurrency and the
	// cache are derived from it, and a cache asked for beyond the share's
	// cache part is capped, with a warning (see memory.go).
	MemoryBytes int64
	// UploadConcurrency is how many chunks a drain uploads at once
	// (default 4).
	UploadConcurrency int
	// ReadCacheBytes, when positive, keeps whole copies of the chunks a
	// writable open reads on node-local disk, up to this many bytes, so a
	// remote store is asked once per chunk instead of once per read miss
	// (see readcache.go). Off by default: a file store needs none.
	ReadCacheBytes int64
	// ReadCacheDir is the read cache's directory (default
	// WALDir/<name>/readcache). It is emptied at Start and removed at Close.
	ReadCacheDir string
	// ReadAheadBlocks is how far a sequential read that misses the cache
	// reads ahead in the same chunk (default 256 blocks, 1 MiB; negative:
	// none).
	ReadAheadBlocks int
	// Logger receives the engine's logs (default slog.Default()).
	Logger *slog.Logger
	// DeferBackground makes a writable Open leave the volume's background
	// work (WAL writeback, drains, owner requests) stopped until Start is
	// called, so that nothing in the engine opens a file or a connection
	// between Open and Start. A host that re-points file descriptors after
	// opening the volume (nbdkit swaps stdin and stdout for /dev/null after
	// get_ready, assuming one thread) needs that window quiet. Writers
	// that fill MaxPendingBytes before Start wait for it.
	DeferBackground bool
	// Durability is this open's durability class (see storelog.go); the
	// default is the class recorded in the volume's manifest.
	Durability Durability
	// LeaseDuration is the ownership lease's duration (default
	// DefaultLeaseDuration; see lease.go). A writable open confirms a
	// Flush only while it holds a valid lease; another node takes over a
	// volume whose holder neither renews nor releases it after about 1.2
	// durations.
	LeaseDuration time.Duration
	// TakeoverTimeout bounds how long a writable Open waits for a live
	// holder of the volume's lease to release it (default 2 minutes; it
	// is raised to at least 2 lease durations): the holder renews but
	// does not drain and release, as when its drains fail. Then Open fails
	// with ErrInUse.
	TakeoverTimeout time.Duration
	// HandoffTimeout bounds how long Standby.Handoff waits for a live
	// owner to drain, commit and release the volume (default
	// DefaultHandoffTimeout): the pause a live migration's guest sees at
	// switch-over is at most about this. An owner that stopped renewing
	// its lease (its node died) is waited for until the lease expires,
	// even past this bound. See handoff.go.
	HandoffTimeout time.Duration
	// StaleRetention is how long a stale WAL set aside at open (see
	// quarantine) is kept for inspection before an open removes it
	// (default DefaultStaleRetention; negative: forever).
	StaleRetention time.Duration
	// Keys supplies the key-encryption key of an encrypted volume. Open
	// unwraps the volume's data keys with it before it changes anything
	// (an open without it, or with the wrong key, fails with ErrKey); a
	// plain volume ignores it. See docs/encryption.md.
	Keys KeySource
	// MaxSnapshots limits Snapshot as SnapshotOptions.MaxSnapshots does
	// CreateSnapshot (0: DefaultMaxSnapshots; negative: no limit).
	MaxSnapshots int
	// indexCap is the chunk index cache's size, set from MemoryBytes.
	indexCap int
	// Compaction tunes the background compactor of a writable open (see
	// compact.go).
	Compaction CompactionOptions
	// crash, when set by tests, is called at named crash points.
	crash func(point string) error
	// clock, when set by tests, replaces the lease clock (bootClock).
	clock func() time.Duration
	// handoff: this writable open is a Standby's handoff (see
	// handoff.go): it polls the lease fast and gives up on a live holder
	// after HandoffTimeout.
	handoff bool
}

func (o *Options) setDefaults(store backend.Store) {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if backend.IsLocal(store) && o.CacheBlocks == 0 && o.CacheMemPercent <= 0 {
		// The node's page cache keeps a local store's chunk files: a
		// second copy in the read cache, and read-ahead into it, cost
		// more than they save (a copy and an index update per block).
		o.CacheBlocks = -1
		if o.ReadAheadBlocks == 0 {
			o.ReadAheadBlocks = -1
		}
	}
	if o.MemoryBytes > 0 {
		o.fitMemory()
	}
	if o.CacheBlocks == 0 {
		if o.CacheMemPercent > 0 {
			o.CacheBlocks = cache.BlocksForMemPercent(o.CacheMemPercent, 16384)
		} else {
			o.CacheBlocks = 16384
		}
	}
	if o.DrainInterval <= 0 {
		o.DrainInterval = 5 * time.Second
	}
	if o.DrainBytes <= 0 {
		o.DrainBytes = 64 << 20
	}
	if o.MaxPendingBytes <= 0 {
		o.MaxPendingBytes = 512 << 20
	}
	if o.MaxPendingBytes < o.DrainBytes {
		o.MaxPendingBytes = o.DrainBytes
	}
	if o.WALDeferBytes == 0 {
		o.WALDeferBytes = o.MaxPendingBytes / 8 * 7
	}
	if o.SlabPoolBytes == 0 {
		o.SlabPoolBytes = o.MaxPendingBytes + o.MaxPendingBytes/4
	}
	if o.UploadConcurrency <= 0 {
		o.UploadConcurrency = 4
	}
	if o.ReadAheadBlocks == 0 {
		o.ReadAheadBlocks = 256
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.StaleRetention == 0 {
		o.StaleRetention = DefaultStaleRetention
	}
	if o.LeaseDuration == 0 {
		o.LeaseDuration = DefaultLeaseDuration
	}
	if o.TakeoverTimeout <= 0 {
		o.TakeoverTimeout = 2 * time.Minute
	}
	o.TakeoverTimeout = max(o.TakeoverTimeout, 2*o.LeaseDuration)
	if o.HandoffTimeout <= 0 {
		o.HandoffTimeout = DefaultHandoffTimeout
	}
	o.Compaction.setDefaults()
}

// Volume is an open volume. All methods are safe for concurrent use.
type Volume struct {
	name  string
	store backend.Store
	opts  Options
	log   *slog.Logger
	fs    vfs.FS
	wdir  string    // WALDir/<name>; empty when read-only
	lock  io.Closer // WAL directory lock

	size  atomic.Int64
	seq   atomic.Uint64 // last assigned sequence number; assigned under a shard lock
	gen   uint64        // current WAL generation; changed with every shard lock held
	epoch uint64
	owner [16]byte

	shards [nShards]shard
	rmwMu  [64]sync.Mutex // stripes serializing read-modify-write of partial blocks

	bmap  atomic.Pointer[blockmap.Map] // committed extent map
	cache *cache.LRU
	slabs slabPool // the WAL arena's free slabs (log.go)
	refs  []string // volume table: refs[0] is this volume, then ancestors; fixed at open
	idx   chunkIndexCache
	// keys holds the unwrapped data keys of an encrypted volume (nil:
	// plain); compression is the chunk compression it writes with. A
	// volume with either writes version 2 chunks; an encrypted one seals
	// its WAL records as they are written out (crypt.go, putBlockRecord).
	keys        *keyring
	compression uint8
	walAEAD     cipher.AEAD // seals this open's WAL records (keys.walKey)
	// lastFetch is where the last backend read ended (read-ahead).
	lastFetch atomic.Pointer[fetchPos]

	trimMu   sync.RWMutex // guards trims
	trims    pendingTrims // blocks trimmed by records not yet committed (trim.go)
	hasTrims atomic.Bool  // trims is not empty

	drainMu   sync.Mutex // one drain at a time; guards the fields below
	man       *manifest.Manifest
	manVer    backend.Version
	manSum    [sha256.Size]byte            // SHA-256 of man's encoding, as committed
	inDoubt   [][sha256.Size]byte          // failed commit attempts since man (see commit)
	chunkSeq  uint64                       // last chunk counter used in this epoch
	chunkSize map[blockmap.ChunkRef]uint32 // block count of every chunk in man
	closing   bool                         // the next commit is Close's: clear FlagOpen
	request   uint64                       // newest drain request seen (see snapshot.go)
	comp      *compactor                   // the background compactor (compact.go)
	dirty     bool                         // metadata (size) changed since the last commit

	pending   atomic.Int64 // WAL bytes not yet drained
	unwritten atomic.Int64 // WAL bytes of live segments not yet written to their files (log.go)
	admitted  atomic.Int64 // WAL bytes admitted by throttle, not yet in pending
	waitMu    sync.Mutex   // guards waitCond's condition (pending, state)
	waitCond  *sync.Cond
	builders  chan *chunk.Builder             // reusable chunk buffers
	kick      chan struct{}                   // asks the drain loop for a drain now
	wprep     chan struct{}                   // asks walPrepLoop to prepare free segment files (log.go)
	wsettle   chan chan struct{}              // settleWALPrep's requests to walPrepLoop (log.go)
	wbsettle  chan chan struct{}              // settleWriteback's requests to writebackLoop (log.go)
	writeback chan *segment                   // full slabs to write out
	wfree     walFree                         // retired WAL segment files kept for reuse (log.go)
	rc        atomic.Pointer[diskcache.Cache] // chunk read cache, when configured (readcache.go)
	stop      chan struct{}
	done      sync.WaitGroup
	started   sync.Once // Start's background goroutines; Close spends it

	ops     sync.RWMutex          // held shared by every I/O call, exclusively by Close
	walFail atomic.Pointer[error] // sticky WAL failure (see errWALSync)
	// walWriteFail is the outstanding retryable WAL write failure, if any
	// (see errWALSync).
	walWriteFail atomic.Pointer[error]
	state        atomic.Int32 // stateOpen, stateFenced, stateClosed, stateReleasing, stateReleased
	released     atomic.Bool  // the volume was released to another open (see release)
	lastErr      atomic.Pointer[error]
	lease        leaseState
	slog         storeLog
	committedHW  atomic.Uint64 // the committed manifest's SeqHW

	stats counters
}

const (
	stateOpen int32 = iota
	stateFenced
	stateClosed
	stateReleasing // draining to release the volume to another open: writes fail
	stateReleased  // released to another open: writes fail, nothing is pending
)

type trimRange struct {
	start, count uint64
	seq          uint64
}

// counters are the engine's statistics.
type counters struct {
	writes, reads, flushes, fsyncs, trims atomic.Uint64
	drains, drainErrors, chunksPut        atomic.Uint64
	bytesDrained, backendReads            atomic.Uint64
	replayed                              atomic.Uint64
	resolvedCommits                       atomic.Uint64
	storeLogPuts                          atomic.Uint64
	walRecycled                           atomic.Uint64
	walWritten, walSkipped                atomic.Uint64 // record bytes written to WAL files; committed by a drain unwritten
	m                                     engineMetrics // see metrics.go
	gcRuns, gcChunksDeleted               atomic.Uint64
	gcBytesRead, gcBytesWritten           atomic.Uint64
	gcBytesReclaimed                      atomic.Uint64
}

// Stats is a snapshot of a volume's counters and state.
type Stats struct {
	Name          string
	Size          int64
	Epoch         uint64
	PendingBytes  int64 // written but not yet in the backend
	Writes        uint64
	Reads         uint64
	Flushes       uint64
	Fsyncs        uint64
	WALRecycled   uint64 // WAL segments written into the file of a retired one
	Trims         uint64
	Drains        uint64
	DrainErrors   uint64
	ChunksPut     uint64
	BytesDrained  uint64
	BackendReads  uint64
	CacheHits     uint64
	CacheMisses   uint64
	Extents       int
	Chunks        int
	Replayed      uint64 // WAL records replayed at open
	Fenced        bool
	LastDrainErr  string
	CommittedSeq  uint64
	CurrentSeq    uint64
	MappedBlocks  uint64
	SealedPending int
	// SlabBytes is the memory of the WAL arena's slabs, in use and pooled
	// (records replayed at open are held apart from it until drained).
	SlabBytes int64
	// WALBytesWritten: record bytes written to WAL segment files.
	// WALBytesSkipped: record bytes a drain committed before anything
	// asked for them to be durable, never written to the WAL.
	// WALUnwrittenBytes: record bytes held in memory only, not yet
	// written to the WAL nor committed (Options.WALDeferBytes bounds what
	// the writeback leaves of them).
	WALBytesWritten   uint64
	WALBytesSkipped   uint64
	WALUnwrittenBytes int64

	// ResolvedCommits counts manifest commits that failed (their answer
	// lost, their outcome unknown) and that reading the manifest back
	// showed had applied.
	ResolvedCommits uint64
	// Durability is the open's durability class; StoreLogPuts counts its
	// store-log uploads (group commits).
	Durability   Durability
	StoreLogPuts uint64
	// Metrics are the latencies and rarer counters (metrics.go).
	Metrics Metrics

	// Compaction (see compact.go). GCRuns counts compaction commits;
	// GCBytesRead and GCBytesWritten count the chunk bytes compaction read
	// and wrote (not in BytesDrained; its chunks are in ChunksPut);
	// GCBytesReclaimed the bytes of the chunks compaction deleted;
	// GCChunksDeleted the unreferenced chunks garbage sweeps deleted
	// (chunks a drain or a compaction superseded are in
	// Metrics.ChunksReclaimed).
	GCRuns uint64
	// ChunkBlocksStored and ChunkBlocksLive are the blocks the volume's
	// own chunks that its map references hold, and the live blocks among
	// them, as the compactor's last policy check counted them (zero on a
	// read-only open or before the first check): their ratio is the
	// dead space compaction works on.
	ChunkBlocksStored, ChunkBlocksLive uint64
	GCBytesRead                        uint64
	GCBytesWritten                     uint64
	GCBytesReclaimed                   uint64
	GCChunksDeleted                    uint64
	// ReadCache counts the chunk read cache's work (zero without one).
	ReadCache diskcache.Stats
}

func manifestKey(name string) string { return name + "/manifest" }
func chunkKey(name string, id uint64) string {
	return fmt.Sprintf("%s/chunks/%016x", name, id)
}

// chunkKeyRef is the key of a chunk named by volume-table index.
func (v *Volume) chunkKeyRef(ref blockmap.ChunkRef) string { return chunkKey(v.refs[ref.Vol], ref.ID) }

func validName(name string) error {
	if err := backend.ValidateName(name); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidName, err)
	}
	return nil
}

// roundSize rounds a size up to whole blocks.
func roundSize(size int64) int64 { return (size + BlockSize - 1) / BlockSize * BlockSize }

// Create creates a volume of size bytes (rounded up to 4 KiB) and opens it.
// It fails with ErrExists if the name is taken.
func Create(ctx context.Context, store backend.Store, name string, size int64, opts Options) (*Volume, error) {
	if err := CreateOnly(ctx, store, name, size); err != nil {
		return nil, err
	}
	return Open(ctx, store, name, opts)
}

// CreateOnly creates a volume's manifest without opening it, in the
// default durability class (DurabilityNode).
func CreateOnly(ctx context.Context, store backend.Store, name string, size int64) error {
	return CreateWithClass(ctx, store, name, size, DurabilityNode)
}

// CreateWithClass creates a volume's manifest, recording its durability
// class, without opening it.
func CreateWithClass(ctx context.Context, store backend.Store, name string, size int64, d Durability) error {
	return CreateVolume(ctx, store, name, size, CreateOptions{Durability: d})
}

// CreateOptions configure CreateVolume.
type CreateOptions struct {
	// Durability is the volume's durability class (default
	// DurabilityNode).
	Durability Durability
	// Compression compresses the volume's chunks (default none).
	Compression Compression
	// Keys, when set, makes the volume encrypted: it gets a random data
	// key, stored in its manifest wrapped by Keys' KEK. Every later open
	// needs the same KEK (Options.Keys) until a Rekey changes it.
	Keys KeySource
}

// CreateVolume creates a volume's manifest without opening it.
func CreateVolume(ctx context.Context, store backend.Store, name string, size int64, opts CreateOptions) error {
	if err := validName(name); err != nil {
		return err
	}
	if size <= 0 || size > 1<<50 {
		return fmt.Errorf("%w: size %d must be between 1 byte and 1 PiB", ErrInvalidArg, size)
	}
	comp, err := ParseCompression(string(opts.Compression))
	if err != nil {
		return err
	}
	m := &manifest.Manifest{Name: name, Size: roundSize(size), Compression: comp.code()}
	if opts.Keys != nil {
		wk, _, err := newWrappedKey(ctx, name, opts.Keys)
		if err != nil {
			return err
		}
		m.AddKey(wk)
		m.WriteKey = wk.ID
	}
	d := opts.Durability
	switch d {
	case DurabilityStore:
		m.Flags |= manifest.FlagDurableStore
	case DurabilityNode, DurabilityDefault:
	default:
		return fmt.Errorf("%w: durability %q", ErrInvalidArg, d)
	}
	if _, err := store.PutIf(ctx, manifestKey(name), manifest.Encode(m), ""); err != nil {
		if errors.Is(err, backend.ErrPrecondition) {
			return fmt.Errorf("%w: %s", ErrExists, name)
		}
		return fmt.Errorf("viperblock: create %s: %w", name, err)
	}
	return nil
}

// readManifest loads and verifies a volume's manifest.
// A tombstone (FlagDeleted) is returned as it is; see readLiveManifest.
func readManifest(ctx context.Context, store backend.Store, name string) (*manifest.Manifest, backend.Version, error) {
	if err := validName(name); err != nil {
		return nil, "", err
	}
	b, ver, err := store.Get(ctx, manifestKey(name))
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return nil, "", fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		return nil, "", fmt.Errorf("viperblock: read manifest of %s: %w", name, err)
	}
	m, err := manifest.Decode(b)
	if err != nil {
		return nil, "", fmt.Errorf("%w: volume %s: %v", ErrCorrupt, name, err)
	}
	if m.Name != name {
		return nil, "", fmt.Errorf("%w: manifest under %s names volume %q", ErrCorrupt, name, m.Name)
	}
	return m, ver, nil
}

// Info describes a volume as committed in the backend.
type Info struct {
	Name         string
	Size         int64
	WrittenBytes int64 // bytes mapped to chunks
	Extents      int
	Chunks       int
	ChunkBytes   int64 // bytes of all referenced chunks
	Epoch        uint64
	Parent       string // "volume@snapshot" for a clone
	CommittedSeq uint64
	Durability   Durability // the volume's class
	Open         bool       // open for writing on some node
	Committed    time.Time  // time of the last commit
	Snapshots    []string
	Dependants   []string // clones made from this volume's snapshots
	// Encrypted: the volume seals its data; KEKID names the KEK that
	// wraps the data key it writes with (what Options.Keys must hold).
	Encrypted   bool
	KEKID       string `json:",omitempty"`
	Compression Compression
}

// Inspect reads a volume's committed state from the backend, with its
// snapshots and the clones made from them: it reads every snapshot object of
// the volume and lists each one's dependants. A caller that needs only the
// volume's own state (size, epoch, whether it is open) calls Stat, which
// reads one object.
func Inspect(ctx context.Context, store backend.Store, name string) (Info, error) {
	inf, err := Stat(ctx, store, name)
	if err != nil {
		return Info{}, err
	}
	snaps, err := listSnapshotObjects(ctx, store, name)
	if err != nil {
		return Info{}, err
	}
	for _, s := range snaps {
		if s.Flags&(manifest.FlagDeleted|manifest.FlagInternal) == 0 {
			inf.Snapshots = append(inf.Snapshots, s.Label)
		}
		deps, err := Dependants(ctx, store, name, s.Label)
		if err != nil {
			return Info{}, err
		}
		inf.Dependants = append(inf.Dependants, deps...)
	}
	return inf, nil
}

// Delete deletes a volume. If snapshots of it remain, it becomes a hidden
// tombstone that keeps just the data they use, and goes when they do.
// Deleting a volume open for writing on a node is ErrInUse; a missing
// volume is ErrNotFound. Delete first marks the volume deleted, so a crash
// part way leaves a tombstone that a retry (or GC) finishes removing.
func Delete(ctx context.Context, store backend.Store, name string) error {
	m, ver, err := readManifest(ctx, store, name)
	if err != nil {
		return err
	}
	deleted := m.Flags&manifest.FlagDeleted != 0
	if !deleted && m.Flags&manifest.FlagOpen != 0 {
		return fmt.Errorf("%w: %s is open for writing on a node (epoch %d); detach it first", ErrInUse, name, m.Epoch)
	}
	snaps, err := listSnapshotObjects(ctx, store, name)
	if err != nil {
		return err
	}
	if deleted && len(snaps) > 0 {
		return fmt.Errorf("%w: %s (deleted)", ErrNotFound, name)
	}
	if !deleted {
		m.Flags |= manifest.FlagDeleted
		if _, err := store.PutIf(ctx, manifestKey(name), manifest.Encode(m), ver); err != nil {
			if errors.Is(err, backend.ErrPrecondition) {
				return fmt.Errorf("%w: %s changed while being deleted", ErrInUse, name)
			}
			return err
		}
	}
	if len(snaps) == 0 {
		return removeVolume(ctx, store, m)
	}
	_, err = collectGarbage(ctx, store, name)
	return err
}

// DeleteWAL removes a volume's local WAL directory (after the volume was
// closed cleanly or deliberately abandoned).
func DeleteWAL(fs vfs.FS, walDir, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if fs == nil {
		fs = vfs.Default
	}
	return fs.RemoveAll(filepath.Join(walDir, name))
}

// Name returns the volume's name.
func (v *Volume) Name() string { return v.name }

// Size returns the volume's size in bytes.
func (v *Volume) Size() int64 { return v.size.Load() }

// Epoch returns the ownership epoch this open holds.
func (v *Volume) Epoch() uint64 { return v.epoch }

// Stats returns the volume's counters.
func (v *Volume) Stats() Stats {
	s := Stats{
		Name: v.name, Size: v.Size(), Epoch: v.epoch, PendingBytes: v.pending.Load(),
		Writes: v.stats.writes.Load(), Reads: v.stats.reads.Load(), Flushes: v.stats.flushes.Load(),
		Fsyncs: v.stats.fsyncs.Load(), WALRecycled: v.stats.walRecycled.Load(),
		WALBytesWritten: v.stats.walWritten.Load(), WALBytesSkipped: v.stats.walSkipped.Load(), WALUnwrittenBytes: v.unwritten.Load(), Trims: v.stats.trims.Load(), Drains: v.stats.drains.Load(),
		DrainErrors: v.stats.drainErrors.Load(), ChunksPut: v.stats.chunksPut.Load(),
		BytesDrained: v.stats.bytesDrained.Load(), BackendReads: v.stats.backendReads.Load(),
		Replayed: v.stats.replayed.Load(), Fenced: v.state.Load() == stateFenced || v.state.Load() == stateReleased,
		CurrentSeq: v.seq.Load(), ResolvedCommits: v.stats.resolvedCommits.Load(),
		Durability: DurabilityNode, StoreLogPuts: v.stats.storeLogPuts.Load(), CommittedSeq: v.committedSeq(),
		GCRuns: v.stats.gcRuns.Load(), GCBytesRead: v.stats.gcBytesRead.Load(), GCBytesWritten: v.stats.gcBytesWritten.Load(),
		GCBytesReclaimed: v.stats.gcBytesReclaimed.Load(), GCChunksDeleted: v.stats.gcChunksDeleted.Load(),
	}
	if v.slog.on {
		s.Durability = DurabilityStore
	}
	s.CacheHits, s.CacheMisses = v.cache.Stats()
	s.Metrics = v.stats.m.snapshot()
	s.Metrics.GCRuns += s.GCRuns
	if v.comp != nil {
		s.ChunkBlocksStored, s.ChunkBlocksLive = v.comp.stored.Load(), v.comp.live.Load()
	}
	s.Metrics.GCChunksDeleted = s.GCChunksDeleted
	m := v.bmap.Load()
	s.Extents = m.Len()
	s.MappedBlocks = m.Blocks()
	if e := v.lastErr.Load(); e != nil {
		s.LastDrainErr = (*e).Error()
	}
	for i := range v.shards {
		sh := &v.shards[i]
		sh.mu.Lock()
		s.SealedPending += len(sh.sealed)
		sh.mu.Unlock()
	}
	s.SlabBytes = v.slabs.live.Load()
	s.ReadCache = v.readCacheStats()
	return s
}

func (v *Volume) checkWritable() error {
	if v.opts.ReadOnly {
		return ErrReadOnly
	}
	switch v.state.Load() {
	case stateFenced:
		return fmt.Errorf("%w: %s", ErrFenced, v.name)
	case stateReleasing, stateReleased:
		return fmt.Errorf("%w: %s: released to another open", ErrFenced, v.name)
	case stateClosed:
		return ErrClosed
	}
	return nil
}

func (v *Volume) crashPoint(name string) error {
	if v.opts.crash != nil {
		return v.opts.crash(name)
	}
	return nil
}
