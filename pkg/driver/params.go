package driver

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// StorageClass parameters (CreateVolumeRequest.parameters). Keys with the
// prefix "csi.storage.k8s.io/" belong to the sidecars and are ignored; any
// other key not listed here is InvalidArgument.
const (
	// ParamStore names the store (a --store NAME); default --default-store.
	ParamStore = "store"
	// ParamFsType is the filesystem when the volume capability names none:
	// ext4 (default) or xfs.
	ParamFsType = "fsType"
	// ParamMkfsOptions are extra mkfs arguments, space-separated.
	ParamMkfsOptions = "mkfsOptions"
	// ParamCache sizes the volume's read cache on the node: blocks, a
	// percentage of memory (10%) or a size (256MiB).
	ParamCache = "cache"
	// ParamDrainInterval bounds how long written data waits before it goes
	// to the store (the loss window if a node dies), e.g. 5s.
	ParamDrainInterval = "drainInterval"
	// ParamDurability is the durability class: node (a flush is durable
	// on the node) or store (a flush is durable in the object store).
	ParamDurability = "durability"
	// ParamLeaseDuration is the ownership lease's duration, e.g. 15s: how
	// long another node waits for an owner that stopped answering.
	ParamLeaseDuration = "leaseDuration"
	// ParamCompression compresses a new volume's chunks: zstd, lz4 or
	// none (default). A clone keeps its source's.
	ParamCompression = "compression"
)

const k8sParamPrefix = "csi.storage.k8s.io/"

// volumeParams are the parsed parameters; they travel to the node in the
// volume context.
type volumeParams struct {
	Store         string
	FsType        string
	MkfsOptions   []string
	Cache         string
	DrainInterval string
	Durability    string
	LeaseDuration string
	Compression   string // creation only: not in the volume context
}

// parseVolumeParams validates CreateVolume parameters.
func parseVolumeParams(p map[string]string, defStore string) (volumeParams, error) {
	vp := volumeParams{Store: defStore}
	for k, v := range p {
		if strings.HasPrefix(k, k8sParamPrefix) {
			continue
		}
		switch k {
		case ParamStore:
			vp.Store = v
		case ParamFsType:
			fs, err := checkFsType(v)
			if err != nil {
				return vp, err
			}
			vp.FsType = fs
		case ParamMkfsOptions:
			vp.MkfsOptions = strings.Fields(v)
			for _, o := range vp.MkfsOptions {
				if strings.ContainsAny(o, "\x00\n") {
					return vp, fmt.Errorf("parameter %s: bad character", k)
				}
			}
		case ParamCache:
			if err := checkCache(v); err != nil {
				return vp, fmt.Errorf("parameter %s=%s: %v", k, v, err)
			}
			vp.Cache = v
		case ParamDrainInterval:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || d > time.Hour {
				return vp, fmt.Errorf("parameter %s=%s: want a duration between 1ms and 1h, e.g. 5s", k, v)
			}
			vp.DrainInterval = v
		case ParamDurability:
			d, err := vb.ParseDurability(v)
			if err != nil {
				return vp, fmt.Errorf("parameter %s=%s: want node or store", k, v)
			}
			vp.Durability = string(d)
		case ParamLeaseDuration:
			if err := checkLease(v); err != nil {
				return vp, fmt.Errorf("parameter %s=%s: %v", k, v, err)
			}
			vp.LeaseDuration = v
		case ParamCompression:
			c, err := vb.ParseCompression(v)
			if err != nil {
				return vp, fmt.Errorf("parameter %s=%s: want zstd, lz4 or none", k, v)
			}
			vp.Compression = string(c)
		default:
			return vp, fmt.Errorf("unknown parameter %q (known: %s, %s, %s, %s, %s, %s, %s, %s)", k, ParamStore, ParamFsType, ParamMkfsOptions, ParamCache, ParamDrainInterval, ParamDurability, ParamLeaseDuration, ParamCompression)
		}
	}
	if err := checkMkfsOptionsFor(vp.FsType, vp.MkfsOptions); err != nil {
		return vp, err
	}
	if vp.Store == "" {
		return vp, fmt.Errorf("parameter %s is required: this driver has no default store", ParamStore)
	}
	if err := validStoreName(vp.Store); err != nil {
		return vp, err
	}
	return vp, nil
}

// compression is the compression a new volume gets.
func (vp volumeParams) compression() vb.Compression {
	if vp.Compression == "" {
		return vb.CompressionNone
	}
	return vb.Compression(vp.Compression)
}

// context returns the volume context handed to the node.
func (vp volumeParams) context() map[string]string {
	c := map[string]string{ParamStore: vp.Store}
	if vp.FsType != "" {
		c[ParamFsType] = vp.FsType
	}
	if len(vp.MkfsOptions) > 0 {
		c[ParamMkfsOptions] = strings.Join(vp.MkfsOptions, " ")
	}
	if vp.Cache != "" {
		c[ParamCache] = vp.Cache
	}
	if vp.DrainInterval != "" {
		c[ParamDrainInterval] = vp.DrainInterval
	}
	if vp.Durability != "" {
		c[ParamDurability] = vp.Durability
	}
	if vp.LeaseDuration != "" {
		c[ParamLeaseDuration] = vp.LeaseDuration
	}
	return c
}

func checkLease(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil || d < vb.MinLeaseDuration || d > time.Hour {
		return fmt.Errorf("want a duration between %s and 1h, e.g. 15s", vb.MinLeaseDuration)
	}
	return nil
}

// parseVolumeContext reads the volume context on the node. Unknown keys
// are ignored (the CO adds its own), bad values are InvalidArgument.
func parseVolumeContext(c map[string]string) (volumeParams, error) {
	var vp volumeParams
	if v := c[ParamFsType]; v != "" {
		fs, err := checkFsType(v)
		if err != nil {
			return vp, err
		}
		vp.FsType = fs
	}
	vp.MkfsOptions = strings.Fields(c[ParamMkfsOptions])
	for _, o := range vp.MkfsOptions {
		if strings.ContainsRune(o, 0) {
			return vp, fmt.Errorf("volume context %s: bad character", ParamMkfsOptions)
		}
	}
	// The same allow-list as the StorageClass parameter: a hand-made
	// PersistentVolume gets no more than a provisioned one. NodeStage
	// checks again against the capability's filesystem.
	if err := checkMkfsOptionsFor(vp.FsType, vp.MkfsOptions); err != nil {
		return vp, fmt.Errorf("volume context: %w", err)
	}
	if v := c[ParamCache]; v != "" {
		if err := checkCache(v); err != nil {
			return vp, fmt.Errorf("volume context %s=%s: %v", ParamCache, v, err)
		}
		vp.Cache = v
	}
	if v := c[ParamDrainInterval]; v != "" {
		if d, err := time.ParseDuration(v); err != nil || d <= 0 {
			return vp, fmt.Errorf("volume context %s=%s: not a duration", ParamDrainInterval, v)
		}
		vp.DrainInterval = v
	}
	if v := c[ParamDurability]; v != "" {
		d, err := vb.ParseDurability(v)
		if err != nil {
			return vp, fmt.Errorf("volume context %s=%s: want node or store", ParamDurability, v)
		}
		vp.Durability = string(d)
	}
	if v := c[ParamLeaseDuration]; v != "" {
		if err := checkLease(v); err != nil {
			return vp, fmt.Errorf("volume context %s=%s: %v", ParamLeaseDuration, v, err)
		}
		vp.LeaseDuration = v
	}
	return vp, nil
}

func checkFsType(v string) (string, error) {
	switch strings.ToLower(v) {
	case "", "ext4":
		return "ext4", nil
	case "xfs":
		return "xfs", nil
	}
	return "", fmt.Errorf("filesystem %q is not supported (ext4, xfs)", v)
}

// checkCache accepts what the plugin's cache= takes (the rules of its
// Config.setCache in cmd/nbdkit-plugin/internal/vbplugin): a positive block
// count, a percentage of memory in (0, 90] or a size of at least one 4 KiB
// block; anything with characters outside [0-9A-Za-z.%] is refused before
// it reaches a command line.
func checkCache(v string) error {
	if v == "" || len(v) > 32 {
		return fmt.Errorf("empty or too long")
	}
	for _, c := range v {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.' || c == '%') {
			return fmt.Errorf("bad character %q", c)
		}
	}
	if p, ok := strings.CutSuffix(v, "%"); ok {
		if f, err := strconv.ParseFloat(p, 64); err != nil || !(f > 0 && f <= 90) {
			return fmt.Errorf("a percentage of memory must be in (0, 90]")
		}
		return nil
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return fmt.Errorf("want a positive number of blocks")
		}
		return nil
	}
	if n, err := units.Parse(v); err != nil || n < 4096 {
		return fmt.Errorf("want blocks (16384), a percentage (10%%) or a size of at least 4KiB (256MiB)")
	}
	return nil
}

// access is a validated volume capability.
type access struct {
	Block      bool
	FsType     string // mount volumes: ext4 or xfs ("" means the default)
	MountFlags []string
	Mode       csi.VolumeCapability_AccessMode_Mode
}

// migratable reports the access mode of a block volume that two nodes
// may have at once while a live migration hands it over.
func (a access) migratable() bool {
	return a.Mode == csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
}

// readOnly reports a read-only access mode.
func (a access) readOnly() bool {
	return a.Mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

// checkCapability validates one capability: single-node access modes, and
// MULTI_NODE_MULTI_WRITER for block volumes (a VM disk during a live
// migration: two nodes have it, one owns it at a time; see
// ControllerPublishVolume and NodeStageVolume),
// block or mount with ext4/xfs.
func checkCapability(c *csi.VolumeCapability) (access, error) {
	var a access
	if c == nil {
		return a, fmt.Errorf("volume capability is required")
	}
	if c.GetAccessMode() == nil {
		return a, fmt.Errorf("volume capability has no access mode")
	}
	a.Mode = c.GetAccessMode().GetMode()
	switch a.Mode {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
	case csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		if c.GetBlock() == nil {
			return a, fmt.Errorf("access mode %s is supported for block volumes only (to live-migrate a VM disk): a filesystem cannot be mounted on two nodes at once", a.Mode)
		}
	default:
		return a, fmt.Errorf("access mode %s is not supported: a volume is served by one node at a time (MULTI_NODE_MULTI_WRITER block volumes: handed from node to node, for live migration)", a.Mode)
	}
	switch t := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Block:
		a.Block = true
	case *csi.VolumeCapability_Mount:
		if fs := t.Mount.GetFsType(); fs != "" {
			f, err := checkFsType(fs)
			if err != nil {
				return a, err
			}
			a.FsType = f
		}
		a.MountFlags = t.Mount.GetMountFlags()
		if t.Mount.GetVolumeMountGroup() != "" {
			return a, fmt.Errorf("volume_mount_group is not supported")
		}
	default:
		return a, fmt.Errorf("volume capability needs an access type (block or mount)")
	}
	return a, nil
}

// checkCapabilities validates a list (at least one).
func checkCapabilities(cs []*csi.VolumeCapability) error {
	if len(cs) == 0 {
		return fmt.Errorf("volume capabilities are required")
	}
	for _, c := range cs {
		if _, err := checkCapability(c); err != nil {
			return err
		}
	}
	return nil
}
