package vbplugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// Environment variables read when the matching parameter is absent. The
// store URL may carry secrets for some schemes, so vblock serve and the CSI
// node plugin pass it here rather than on nbdkit's command line.
const (
	EnvStore  = "VBLOCK_STORE"
	EnvWALDir = "VBLOCK_WAL_DIR"
	// EnvKeyFile is the default of encryption_key_file=.
	EnvKeyFile = "VBLOCK_ENCRYPTION_KEY_FILE"
)

// Config is the plugin's configuration, filled by nbdkit's config callbacks.
// The parameters (documented for users in shim.c's config_help):
//
//	volume=NAME          the volume (the magic key: a bare NAME works)
//	store=URL            object store; default $VBLOCK_STORE
//	wal_dir=DIR          WAL directory; default $VBLOCK_WAL_DIR
//	cache=N|N%|SIZE      read cache in blocks, % of memory, or bytes
//	read_cache=SIZE      node-local disk cache of whole chunks, under
//	                     wal_dir (vb.Options.ReadCacheBytes; 0: none);
//	                     default DefaultReadCache for an s3:// store, none
//	                     for a file or memory store
//	size=SIZE            create the volume if it is missing
//	encryption_key_file=FILE  KEK of an encrypted volume (vb.Options.Keys);
//	                     default $VBLOCK_ENCRYPTION_KEY_FILE; with size= a
//	                     missing volume is created encrypted
//	readonly=BOOL        open without ownership
//	resume_only=BOOL     take ownership only back from wal_dir's own open
//	                     (vb.Options.ResumeOnly); refused: exit status 77
//	standby=BOOL         open in standby, the target of a live migration:
//	                     the owner keeps the volume until the first I/O
//	                     here hands it over (see plugin.go, vb.Standby)
//	handoff_timeout=DUR  how long that handoff waits for a live owner
//	                     (vb.Options.HandoffTimeout, default 10s)
//	drain_interval=DUR   engine drain interval
//	lease_duration=DUR   ownership lease duration (vb.Options.LeaseDuration)
//	durability=node|store  this open's durability class (default: the volume's)
//	virtual_size=SIZE    advertise at least SIZE bytes (see Conn.Size)
//	memory=SIZE          the whole server's memory: the engine's share is
//	                     SIZE less ProcessOverhead and the request buffers
//	                     (vb.Options.MemoryBytes), and the Go runtime's
//	                     memory limit follows (see memory.go); at least
//	                     MinMemory
//	max_request=SIZE     the largest read or write request advertised
//	                     (default DefaultMaxRequest, with memory=
//	                     DefaultBudgetMaxRequest)
//	connections=N        connections the memory share budgets request
//	                     buffers for (default 1, the node's one device)
//	pending_limit=SIZE   pending writes before writers wait
//	                     (vb.Options.MaxPendingBytes)
//	slab_pool=SIZE       retired WAL slabs kept for reuse (vb.Options.SlabPoolBytes)
//	wal_defer=SIZE       written data whose WAL write may wait for a flush or
//	                     a drain (vb.Options.WALDeferBytes; 0: none waits)
//	metrics=PATH         serve measurements on a Unix socket (see metrics.go)
//	compact=BOOL         background compaction (default true)
//	compact_bandwidth=SIZE  its bytes per second (0: unlimited)
//	compact_requests=N   its store requests per second (0: unlimited)
//	compact_ratio=R      its stored/live target (vb.CompactionOptions.StoredRatio)
type Config struct {
	Volume          string
	Store           string
	WALDir          string
	CacheBlocks     int
	CacheMemPercent float64
	Size            int64 // create if missing when > 0
	ReadOnly        bool
	ResumeOnly      bool // see vb.Options.ResumeOnly and ExitNotOwner
	Standby         bool // open as a vb.Standby; the first I/O hands over
	HandoffTimeout  time.Duration
	DrainInterval   time.Duration
	LeaseDuration   time.Duration
	Durability      vb.Durability
	VirtualSize     int64 // advertised size when larger than the volume
	Memory          int64 // memory=: the server's share of the node's budget
	PendingLimit    int64
	SlabPool        int64
	WALDefer        int64 // wal_defer=: vb.Options.WALDeferBytes (0: the default)
	MaxRequest      int64 // max_request=; Complete fills the default
	Connections     int   // connections=; Complete fills the default
	// Threads is nbdkit's worker threads per connection, read from its
	// command line (ServerThreads) before Complete; 0: DefaultThreads.
	Threads       int
	MetricsSocket string
	Compaction    vb.CompactionOptions
	// ReadCache is read_cache=: 0 unset (Complete fills the default),
	// negative none.
	ReadCache int64
	// KeyFile is encryption_key_file=; Keys its key source, read by
	// Complete.
	KeyFile string
	Keys    vb.KeySource

	seen map[string]bool
}

// DefaultReadCache is the chunk read cache of a volume on an s3:// store
// when read_cache= is not given: 256 chunks on the node's WAL disk.
const DefaultReadCache = 1 << 30

// Set applies one key=value parameter.
func (c *Config) Set(key, value string) error {
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	if c.seen[key] {
		return fmt.Errorf("parameter %s given more than once", key)
	}
	c.seen[key] = true
	switch key {
	case "volume":
		if value == "" {
			return fmt.Errorf("volume= must not be empty")
		}
		c.Volume = value
	case "encryption_key_file", "encryption-key-file":
		c.KeyFile = value
	case "store":
		c.Store = value
	case "wal_dir", "wal-dir", "waldir":
		c.WALDir = value
	case "cache":
		return c.setCache(value)
	case "size":
		n, err := units.Parse(value)
		if err != nil {
			return fmt.Errorf("size=%s: %v", value, err)
		}
		if n <= 0 {
			return fmt.Errorf("size=%s: must be positive", value)
		}
		c.Size = n
	case "readonly", "ro":
		b, err := parseBool(value)
		if err != nil {
			return fmt.Errorf("readonly=%s: %v", value, err)
		}
		c.ReadOnly = b
	case "resume_only", "resume-only":
		b, err := parseBool(value)
		if err != nil {
			return fmt.Errorf("resume_only=%s: %v", value, err)
		}
		c.ResumeOnly = b
	case "standby":
		b, err := parseBool(value)
		if err != nil {
			return fmt.Errorf("standby=%s: %v", value, err)
		}
		c.Standby = b
	case "handoff_timeout", "handoff-timeout":
		d, err := time.ParseDuration(value)
		if err != nil || d <= 0 || d > time.Hour {
			return fmt.Errorf("handoff_timeout=%s: want a positive duration up to 1h, such as 10s", value)
		}
		c.HandoffTimeout = d
	case "drain_interval", "drain-interval":
		d, err := time.ParseDuration(value)
		if err != nil || d <= 0 {
			return fmt.Errorf("drain_interval=%s: want a positive duration such as 5s", value)
		}
		c.DrainInterval = d
	case "lease_duration", "lease-duration":
		d, err := time.ParseDuration(value)
		if err != nil || d < vb.MinLeaseDuration || d > time.Hour {
			return fmt.Errorf("lease_duration=%s: want a duration between %s and 1h, such as 15s", value, vb.MinLeaseDuration)
		}
		c.LeaseDuration = d
	case "durability":
		d, err := vb.ParseDurability(value)
		if err != nil {
			return fmt.Errorf("durability=%s: want node or store", value)
		}
		c.Durability = d
	case "virtual_size", "virtual-size":
		n, err := units.Parse(value)
		if err != nil {
			return fmt.Errorf("virtual_size=%s: %v", value, err)
		}
		if n <= 0 || n > 1<<50 || n%512 != 0 {
			return fmt.Errorf("virtual_size=%s: must be a positive multiple of 512 bytes, at most 1 PiB", value)
		}
		c.VirtualSize = n
	case "memory":
		n, err := units.Parse(value)
		if err != nil {
			return fmt.Errorf("memory=%s: %v", value, err)
		}
		if n <= 0 {
			return fmt.Errorf("memory=%s: want a positive size (Complete checks it against the threads and connections)", value)
		}
		c.Memory = n
	case "max_request", "max-request":
		n, err := units.Parse(value)
		if err != nil || n < minMaxRequest || n > DefaultMaxRequest || n&(n-1) != 0 {
			return fmt.Errorf("max_request=%s: want a power of two from %d KiB to %d MiB", value, minMaxRequest>>10, DefaultMaxRequest>>20)
		}
		c.MaxRequest = n
	case "connections":
		n, err := strconv.Atoi(value)
		if err != nil || n < 1 || n > 64 {
			return fmt.Errorf("connections=%s: want a number of connections from 1 to 64", value)
		}
		c.Connections = n
	case "pending_limit", "pending-limit":
		n, err := units.Parse(value)
		if err != nil || n < 1<<20 {
			return fmt.Errorf("pending_limit=%s: want a size of at least 1MiB", value)
		}
		c.PendingLimit = n
	case "slab_pool", "slab-pool":
		n, err := units.Parse(value)
		if err != nil || n < 0 {
			return fmt.Errorf("slab_pool=%s: want a size (0: keep none)", value)
		}
		c.SlabPool = n
		if n == 0 {
			c.SlabPool = -1
		}
	case "read_cache", "read-cache":
		n, err := units.Parse(value)
		if err != nil || n < 0 {
			return fmt.Errorf("read_cache=%s: want a size such as 1GiB (0: none)", value)
		}
		if n > 0 && n < 64<<20 {
			return fmt.Errorf("read_cache=%s: at least 64MiB (16 chunks), or 0 for none", value)
		}
		c.ReadCache = n
		if n == 0 {
			c.ReadCache = -1
		}
	case "wal_defer", "wal-defer":
		n, err := units.Parse(value)
		if err != nil || n < 0 {
			return fmt.Errorf("wal_defer=%s: want a size (0: defer no WAL write)", value)
		}
		c.WALDefer = n
		if n == 0 {
			c.WALDefer = -1
		}
	case "metrics":
		if !filepath.IsAbs(value) {
			return fmt.Errorf("metrics=%s: want an absolute socket path", value)
		}
		c.MetricsSocket = value
	case "compact":
		b, err := parseBool(value)
		if err != nil {
			return fmt.Errorf("compact=%s: %v", value, err)
		}
		c.Compaction.Disabled = !b
	case "compact_bandwidth", "compact-bandwidth":
		n, err := units.Parse(strings.TrimSuffix(value, "/s"))
		if err != nil || n < 0 {
			return fmt.Errorf("compact_bandwidth=%s: want bytes per second such as 64MiB (0: unlimited)", value)
		}
		c.Compaction.BytesPerSec = n
		if n == 0 {
			c.Compaction.BytesPerSec = -1
		}
	case "compact_requests", "compact-requests":
		n, err := strconv.ParseFloat(value, 64)
		if err != nil || n < 0 || n != n {
			return fmt.Errorf("compact_requests=%s: want requests per second such as 100 (0: unlimited)", value)
		}
		c.Compaction.RequestsPerSec = n
		if n == 0 {
			c.Compaction.RequestsPerSec = -1
		}
	case "compact_ratio", "compact-ratio":
		r, err := strconv.ParseFloat(value, 64)
		if err != nil || r < 1 || r > 100 {
			return fmt.Errorf("compact_ratio=%s: want a ratio of stored to live data of at least 1, such as 1.15", value)
		}
		c.Compaction.StoredRatio = r
	default:
		return fmt.Errorf("unknown parameter %q (see nbdkit <plugin> --help)", key)
	}
	return nil
}

func (c *Config) setCache(v string) error {
	if p, ok := strings.CutSuffix(strings.TrimSpace(v), "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f <= 0 || f > 90 {
			return fmt.Errorf("cache=%s: percentage must be in (0, 90]", v)
		}
		c.CacheMemPercent = f
		return nil
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return fmt.Errorf("cache=%s: must be a positive number of blocks", v)
		}
		c.CacheBlocks = n
		return nil
	}
	n, err := units.Parse(v)
	if err != nil {
		return fmt.Errorf("cache=%s: want blocks (16384), a percentage (10%%) or a size (256MiB)", v)
	}
	if n < 4096 {
		return fmt.Errorf("cache=%s: smaller than one 4 KiB block", v)
	}
	c.CacheBlocks = int(n / 4096)
	return nil
}

// Complete fills defaults from the environment and checks the whole
// configuration.
func (c *Config) Complete(getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	if c.Volume == "" {
		return fmt.Errorf("missing volume=<NAME>")
	}
	if c.Store == "" {
		c.Store = getenv(EnvStore)
	}
	if c.Store == "" {
		return fmt.Errorf("missing store=<URL> (or %s in the environment)", EnvStore)
	}
	if c.WALDir == "" {
		c.WALDir = getenv(EnvWALDir)
	}
	if c.WALDir == "" && !c.ReadOnly {
		return fmt.Errorf("missing wal_dir=<DIR> (or %s in the environment); a writable volume needs one", EnvWALDir)
	}
	if c.ReadCache == 0 && strings.HasPrefix(c.Store, "s3://") {
		c.ReadCache = DefaultReadCache
	}
	if c.Standby && (c.ReadOnly || c.ResumeOnly || c.Size > 0) {
		return fmt.Errorf("standby=true takes an existing volume over from its owner: it excludes readonly=, resume_only= and size=")
	}
	if c.ResumeOnly && c.Size > 0 {
		return fmt.Errorf("resume_only=true reopens an existing volume: it excludes size=")
	}
	if c.KeyFile == "" {
		c.KeyFile = getenv(EnvKeyFile)
	}
	if c.KeyFile != "" {
		ks, err := seal.LoadKeyFile(c.KeyFile)
		if err != nil {
			return fmt.Errorf("encryption_key_file=%s: %v", c.KeyFile, err)
		}
		c.Keys = ks
	}
	if c.WALDir != "" && !filepath.IsAbs(c.WALDir) {
		abs, err := filepath.Abs(c.WALDir)
		if err != nil {
			return fmt.Errorf("wal_dir=%s: %v", c.WALDir, err)
		}
		c.WALDir = abs
	}
	return c.completeMemory()
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "yes", "on", "":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean (use true/false, 1/0, yes/no, on/off)")
}
