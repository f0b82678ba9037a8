package driver

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/hostcgroup"
	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// DefaultDriverName is the CSI driver name.
const DefaultDriverName = "csi.viperblock.io"

// Options configure the driver. Both binaries share them; each validates
// the part it uses (ValidateController, ValidateNode). The flags that set
// them are registered by AddFlags, so a field's documentation is its flag's.
type Options struct {
	// DriverName is the CSI driver name (default csi.viperblock.io).
	DriverName string
	// Version is reported by GetPluginInfo.
	Version string
	// Endpoint is the gRPC endpoint: unix:///path/to/csi.sock.
	Endpoint string
	// Stores maps a store name to its URL (--store NAME=URL, repeatable).
	// Volume IDs name their store, so a store must keep its name for as
	// long as it holds volumes.
	Stores Stores
	// DefaultStore is used when a StorageClass names none (default: the
	// only store, or the one named "default").
	DefaultStore string

	// Controller.

	// DefaultVolumeSize is used when CreateVolume gives no capacity.
	DefaultVolumeSize int64
	// OwnerWait bounds how long a snapshot or an online expansion waits for
	// the node that has the volume open to drain or grow it.
	OwnerWait time.Duration
	// MaxSnapshotsPerVolume limits the snapshots of one volume (0: the
	// engine's default, vb.DefaultMaxSnapshots; negative: no limit). A
	// CreateSnapshot beyond it fails with ResourceExhausted. Deleted
	// snapshots kept for their clones, and the hidden snapshot behind each
	// clone of the volume, count too.
	MaxSnapshotsPerVolume int
	// NodeCheck says how ControllerPublishVolume learns that a node exists:
	// "store" (node plugins register themselves in each store), "kubernetes"
	// (a CSINode object lists this driver) or "none".
	NodeCheck string
	// CredentialsDir holds the credential files written for CSI secrets
	// (default: a private temporary directory).
	CredentialsDir string

	// Node.

	// NodeID is this node's ID (default: the host name).
	NodeID string
	// StateDir holds node-local state: per-volume state files, nbdkit
	// sockets, pidfiles and logs, and credential files.
	StateDir string
	// WALDir holds the volumes' write-ahead logs (node-local, fast disk).
	WALDir string
	// Nbdkit is the nbdkit binary.
	Nbdkit string
	// Plugin is the viperblock nbdkit plugin (.so).
	Plugin string
	// Attacher chooses how exports become block devices: auto, nbd,
	// nbdfuse.
	Attacher string
	// MaxVolumesPerNode is reported by NodeGetInfo and enforced by
	// NodeStageVolume (default: MemoryBudget / VolumeMemory; see memory.go).
	MaxVolumesPerNode int64
	// MemoryBudget bounds the memory of all the node's volume servers
	// together (default: see defaultBudget in memory.go); each staged
	// volume gets MemoryBudget / MaxVolumesPerNode.
	MemoryBudget int64
	// budgetWhy says where MemoryBudget came from (for the start-up log).
	budgetWhy string
	// DrainLagBytes and DrainLagAge: a volume whose WAL holds more than
	// DrainLagBytes not yet in the backend, or whose oldest such data is
	// older than DrainLagAge, is reported DEGRADED.
	DrainLagBytes int64
	DrainLagAge   time.Duration
	// StaleWALRetention is how long a WAL set aside because another node
	// took the volume over is kept for inspection (negative: forever).
	StaleWALRetention time.Duration
	// ReadyTimeout bounds the wait for nbdkit to serve (it replays the WAL
	// first).
	ReadyTimeout time.Duration
	// NbdkitThreads is nbdkit's --threads, worker threads per connection
	// (0: nbdkit's default, 16). Each keeps a request buffer of up to the
	// plugin's largest request (1 MiB under a memory budget) that comes out
	// of the volume's memory share (see memory.go).
	NbdkitThreads int
	// StoreSecretDir is a Kubernetes Secret mounted as files with the S3
	// stores' keys (see StoreSecret); empty: none.
	StoreSecretDir string

	// NbdkitWrapper is a command prefix for nbdkit's keeper (e.g. one
	// that runs it in another scope). ServerCgroup is the usual way to
	// have nbdkit outlive the node plugin's container.
	NbdkitWrapper []string
	// CgroupRoot is where the host's cgroup file system is mounted in the
	// node plugin's container (default /sys/fs/cgroup).
	CgroupRoot string
	// ServerCgroup names a cgroup under CgroupRoot (created if missing)
	// into which every nbdkit keeper and nbdfuse the node starts is moved
	// right after it starts, so that they outlive the node plugin's
	// container: a container runtime stopping the container kills every
	// process in the container's cgroup. "" leaves them in the node
	// plugin's cgroup. See package hostcgroup.
	ServerCgroup string
	// VirtualSize is the plugin's virtual_size=: the export size nbdkit
	// advertises, larger than the volume so an attached device can grow.
	// -1: the largest volume size, if the plugin supports it; 0: never.
	VirtualSize int64
	// AttachDir holds the attacher's state (default /run/viperblock/attach:
	// attachments do not survive a reboot, so neither should their records).
	AttachDir string
}

// Stores is the --store flag: NAME=URL, repeatable.
type Stores map[string]string

func (s *Stores) String() string {
	if s == nil || *s == nil {
		return ""
	}
	var names []string
	for n := range *s {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

// Set adds one NAME=URL.
func (s *Stores) Set(v string) error {
	name, u, ok := strings.Cut(v, "=")
	if !ok || u == "" {
		return fmt.Errorf("want NAME=URL, e.g. default=file:///var/lib/viperblock/store")
	}
	if err := validStoreName(name); err != nil {
		return err
	}
	if *s == nil {
		*s = Stores{}
	}
	if _, dup := (*s)[name]; dup {
		return fmt.Errorf("store %q given twice", name)
	}
	(*s)[name] = u
	return nil
}

// AddFlags registers the options' flags on fs with their defaults.
func (o *Options) AddFlags(fs *flag.FlagSet, node bool) {
	fs.StringVar(&o.DriverName, "driver-name", DefaultDriverName, "CSI driver name")
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI gRPC endpoint (unix:///path)")
	fs.Var(&o.Stores, "store", "object store NAME=URL (repeatable); the URL may carry secrets only by reference (credentials_file=)")
	fs.StringVar(&o.DefaultStore, "default-store", "", "store used when a StorageClass names none (default: the only store, or \"default\")")
	fs.StringVar(&o.StoreSecretDir, "store-secret-dir", "", "a Secret mounted as files (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; the older accessKeyID, secretAccessKey, sessionToken are still read): the S3 stores' keys, followed as the Secret changes")
	if !node {
		fs.Int64Var(&o.DefaultVolumeSize, "default-volume-size", 1<<30, "volume size when CreateVolume asks for none, in bytes")
		fs.DurationVar(&o.OwnerWait, "owner-wait", 30*time.Second, "how long snapshots and online expansion wait for the node that has a volume open")
		fs.IntVar(&o.MaxSnapshotsPerVolume, "max-snapshots-per-volume", vb.DefaultMaxSnapshots,
			"most snapshots of one volume, counting deleted ones kept for clones and those behind clones (negative: no limit)")
		fs.StringVar(&o.NodeCheck, "node-check", "auto", "how ControllerPublishVolume checks that a node exists: auto, kubernetes, store, none")
		fs.StringVar(&o.CredentialsDir, "credentials-dir", "", "directory for credential files made from CSI secrets (default: a private temporary directory)")
		return
	}
	host, _ := os.Hostname()
	fs.StringVar(&o.NodeID, "node-id", host, "this node's ID")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/viperblock/csi", "node-local state: volume state, nbdkit sockets and logs, credential files")
	fs.StringVar(&o.WALDir, "wal-dir", "/var/lib/viperblock/wal", "node-local directory for the volumes' write-ahead logs")
	fs.StringVar(&o.Nbdkit, "nbdkit", "nbdkit", "nbdkit binary")
	fs.StringVar(&o.Plugin, "plugin", "/usr/lib/viperblock/nbdkit-viperblock-plugin.so", "the viperblock nbdkit plugin")
	fs.StringVar(&o.Attacher, "attacher", "auto", "how NBD exports become block devices: auto, nbd, nbdfuse")
	fs.Int64Var(&o.MaxVolumesPerNode, "max-volumes-per-node", 0, "volumes this node can stage (0: --memory-budget / 96MiB); each gets --memory-budget / this")
	fs.Func("memory-budget", "memory of all volume servers on this node together, e.g. 4GiB (default: 25% of the node's memory, at most the memory limit of the servers' cgroup)", func(v string) error {
		n, err := units.Parse(v)
		if err != nil {
			return err
		}
		if n <= 0 {
			return fmt.Errorf("must be positive")
		}
		o.MemoryBudget = n
		return nil
	})
	fs.Int64Var(&o.DrainLagBytes, "drain-lag-bytes", 1<<30, "WAL bytes not yet in the backend above which a volume is reported degraded")
	fs.DurationVar(&o.StaleWALRetention, "stale-wal-retention", vb.DefaultStaleRetention, "how long a WAL set aside after another node took its volume over is kept for inspection (negative: forever)")
	fs.DurationVar(&o.DrainLagAge, "drain-lag-age", 5*time.Minute, "age of the oldest WAL data not yet in the backend above which a volume is reported degraded")
	fs.DurationVar(&o.ReadyTimeout, "nbdkit-ready-timeout", 2*time.Minute, "how long to wait for nbdkit to serve a volume (it replays the WAL first)")
	fs.IntVar(&o.NbdkitThreads, "nbdkit-threads", DefaultNbdkitThreads, "nbdkit --threads, requests a volume serves at once (each thread's 1 MiB request buffer comes out of the volume's memory share; 0: nbdkit's default, 16)")
	fs.Func("nbdkit-wrapper", "command prefix for nbdkit's keeper, space-separated (--server-cgroup is the usual way to have nbdkit outlive the node plugin's container)", func(v string) error {
		o.NbdkitWrapper = strings.Fields(v)
		return nil
	})
	fs.StringVar(&o.CgroupRoot, "cgroup-root", hostcgroup.DefaultRoot, "where the host's cgroup file system is mounted (e.g. /host/sys/fs/cgroup in a container)")
	fs.StringVar(&o.ServerCgroup, "server-cgroup", "", "cgroup under --cgroup-root for nbdkit and nbdfuse, so they outlive the node plugin's container (needs hostPID, privileged, the host's cgroup fs mounted; \"\": stay in the node plugin's cgroup)")
	fs.Int64Var(&o.VirtualSize, "virtual-size", -1, "export size nbdkit advertises so attached devices can grow (-1: the largest volume, if the plugin supports virtual_size=; 0: off)")
	fs.StringVar(&o.AttachDir, "attach-dir", "/run/viperblock/attach", "the attacher's state directory (should not outlive a reboot)")
}

// complete fills defaults and checks what both services need.
func (o *Options) complete() error {
	if o.DriverName == "" {
		o.DriverName = DefaultDriverName
	}
	if len(o.Stores) == 0 {
		return errors.New("no store configured: pass --store NAME=URL")
	}
	for name := range o.Stores {
		if err := validStoreName(name); err != nil {
			return err
		}
	}
	if o.DefaultStore == "" {
		if len(o.Stores) == 1 {
			for n := range o.Stores {
				o.DefaultStore = n
			}
		} else if _, ok := o.Stores["default"]; ok {
			o.DefaultStore = "default"
		}
	}
	if o.DefaultStore != "" {
		if _, ok := o.Stores[o.DefaultStore]; !ok {
			return fmt.Errorf("default store %q is not among the --store flags", o.DefaultStore)
		}
	}
	return nil
}

// ValidateController fills defaults and checks the controller's options.
func (o *Options) ValidateController() error {
	if err := o.complete(); err != nil {
		return err
	}
	if o.DefaultVolumeSize <= 0 {
		o.DefaultVolumeSize = 1 << 30
	}
	if o.OwnerWait <= 0 {
		o.OwnerWait = 30 * time.Second
	}
	if o.MaxSnapshotsPerVolume == 0 {
		o.MaxSnapshotsPerVolume = vb.DefaultMaxSnapshots
	}
	switch o.NodeCheck {
	case "", "auto":
		o.NodeCheck = "auto"
	case "kubernetes", "store", "none":
	default:
		return fmt.Errorf("--node-check=%s: want auto, kubernetes, store or none", o.NodeCheck)
	}
	return nil
}

// ValidateNode fills defaults and checks the node's options.
func (o *Options) ValidateNode() error {
	if err := o.complete(); err != nil {
		return err
	}
	if o.NodeID == "" {
		return errors.New("--node-id is required")
	}
	if err := validNodeID(o.NodeID); err != nil {
		return err
	}
	for _, d := range []*string{&o.StateDir, &o.WALDir} {
		if *d == "" {
			return errors.New("--state-dir and --wal-dir are required")
		}
		abs, err := filepath.Abs(*d)
		if err != nil {
			return err
		}
		*d = abs
	}
	if o.Plugin == "" {
		return errors.New("--plugin is required")
	}
	if o.Nbdkit == "" {
		o.Nbdkit = "nbdkit"
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 2 * time.Minute
	}
	if o.DrainLagBytes <= 0 {
		o.DrainLagBytes = 1 << 30
	}
	if o.StaleWALRetention == 0 {
		o.StaleWALRetention = vb.DefaultStaleRetention
	}
	if o.DrainLagAge <= 0 {
		o.DrainLagAge = 5 * time.Minute
	}
	if o.CgroupRoot == "" {
		o.CgroupRoot = hostcgroup.DefaultRoot
	}
	if o.ServerCgroup != "" {
		if err := hostcgroup.ValidName(o.ServerCgroup); err != nil {
			return fmt.Errorf("--server-cgroup: %w", err)
		}
	}
	switch o.Attacher {
	case "", "auto":
		o.Attacher = "auto"
	case "nbd", "nbdfuse":
	default:
		return fmt.Errorf("--attacher=%s: want auto, nbd or nbdfuse", o.Attacher)
	}
	why, err := o.fitBudget(hostMemory)
	if err != nil {
		return err
	}
	o.budgetWhy = why
	return nil
}

// validNodeID accepts node IDs that are also valid object names (Kubernetes
// node names are), since the store node check keeps a record per node.
func validNodeID(s string) error {
	if err := validObjectName(s); err != nil {
		return fmt.Errorf("node ID %q: %v", s, err)
	}
	return nil
}
