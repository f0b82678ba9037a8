package driver

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/viperblock/viperblock-csi/pkg/units"
)

// The node's memory budget.
//
// Every staged volume is served by its own nbdkit running the viperblock
// plugin; what such a server holds in memory (pending writes, caches, the
// drain's buffers, the runtime) is bounded by its plugin parameter
// memory=SIZE (see the plugin's memory.go and the engine's memory.go:
// writers wait, never fail, when the pending part of the share is full).
// The node gives every volume the same share,
//
//	share = MemoryBudget / MaxVolumesPerNode
//
// fixed when its server starts, and refuses to stage more than
// MaxVolumesPerNode volumes (ResourceExhausted; NodeGetInfo reports the
// limit, so the scheduler does not place more). The servers together
// therefore stay within the budget whatever the number staged and in
// whatever order volumes come and go, with no coordination between
// servers. A server keeps the share it was started with; a node plugin
// restarted with another budget gives the new share to the servers it
// starts from then on (adopted servers keep theirs).
//
// The price of this simplicity is that an idle volume's share cannot be
// lent to a busy one: a node with few volumes staged uses little of its
// budget. Lowering --max-volumes-per-node raises every volume's share.
const (
	// VolumeMemory is the smallest share of a volume, and so sets the
	// default MaxVolumesPerNode (MemoryBudget / VolumeMemory). Of it the
	// plugin keeps 48 MiB for the process (nbdkit, the Go runtime) and
	// 8.5 MiB for the request buffers of DefaultNbdkitThreads threads
	// (1 MiB requests), and the engine gets the rest, 39.5 MiB: a pending
	// limit of about 16 MiB, so that drains still pack whole 4 MiB chunks,
	// and a read cache of about 10 MiB. (With --nbdkit-threads=0, nbdkit's
	// 16, the engine gets 31 MiB; the plugin refuses a share that leaves
	// the engine less than 16 MiB.)
	VolumeMemory = 96 << 20
	// DefaultNbdkitThreads is the default --nbdkit-threads: enough
	// requests in flight for a volume whose reads go to the object store,
	// few enough that their buffers stay a small part of a share.
	DefaultNbdkitThreads = 8
	// pluginReserve is the node plugin's own memory (gRPC, mounts,
	// supervision, log forwarding), left out of the budget when the
	// servers are charged to the node plugin's own cgroup.
	pluginReserve = 256 << 20
	// defaultBudgetPercent of the node's memory is the default budget.
	defaultBudgetPercent = 25
)

// memoryEnv is where the node reads the machine's and the cgroups' memory;
// tests replace it.
type memoryEnv struct {
	// read reads a file (default os.ReadFile).
	read func(path string) ([]byte, error)
	// procRoot and sysCgroup are /proc and /sys/fs/cgroup.
	procRoot, sysCgroup string
}

var hostMemory = memoryEnv{read: os.ReadFile, procRoot: "/proc", sysCgroup: "/sys/fs/cgroup"}

// memTotal is MemTotal from /proc/meminfo, in bytes.
func (e memoryEnv) memTotal() (int64, error) {
	b, err := e.read(filepath.Join(e.procRoot, "meminfo"))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || kb <= 0 {
				return 0, fmt.Errorf("meminfo: bad MemTotal %q", f[1])
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("meminfo: no MemTotal")
}

// cgroupLimit reads a memory limit from the first of the files that
// exists; 0 means none (absent, "max", or a v1 "unlimited" value above
// 2^60).
func (e memoryEnv) cgroupLimit(paths ...string) int64 {
	for _, p := range paths {
		b, err := e.read(p)
		if err != nil {
			continue
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 || n >= 1<<60 {
			return 0
		}
		return n
	}
	return 0
}

// ownCgroupLimit is the memory limit of the cgroup this process is in
// (v2, or v1's memory hierarchy); 0: none or unknown.
func (e memoryEnv) ownCgroupLimit() int64 {
	b, err := e.read(filepath.Join(e.procRoot, "self", "cgroup"))
	if err != nil {
		return 0
	}
	var paths []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			paths = append(paths, filepath.Join(e.sysCgroup, parts[2], "memory.max"))
		case containsWord(parts[1], "memory"):
			paths = append(paths, filepath.Join(e.sysCgroup, "memory", parts[2], "memory.limit_in_bytes"))
		}
	}
	return e.cgroupLimit(paths...)
}

func containsWord(list, w string) bool {
	for _, s := range strings.Split(list, ",") {
		if s == w {
			return true
		}
	}
	return false
}

// serverCgroupLimit is the memory limit of the cgroup the volume servers
// are charged to, and whether that is the node plugin's own cgroup.
func (e memoryEnv) serverCgroupLimit(o *Options) (limit int64, own bool) {
	if o.ServerCgroup == "" {
		return e.ownCgroupLimit(), true
	}
	return e.cgroupLimit(filepath.Join(o.CgroupRoot, o.ServerCgroup, "memory.max"),
		filepath.Join(o.CgroupRoot, "memory", o.ServerCgroup, "memory.limit_in_bytes")), false
}

// defaultBudget is the default --memory-budget: 25% of the node's memory,
// and no more than the memory limit of the cgroup the servers are charged
// to (less the node plugin's own reserve when that is its own cgroup: the
// servers then share the container's limit with it). A quarter leaves
// the node's workloads three quarters, as the servers' memory is not
// reclaimable; the cgroup limit, when there is one, is where the kernel
// would OOM-kill a server before the budget was reached.
func (e memoryEnv) defaultBudget(o *Options) (int64, string, error) {
	total, err := e.memTotal()
	if err != nil {
		return 0, "", fmt.Errorf("--memory-budget not given and the node's memory unknown: %w", err)
	}
	budget := total * defaultBudgetPercent / 100
	why := fmt.Sprintf("%d%% of MemTotal %s", defaultBudgetPercent, units.Format(total))
	if limit, own := e.serverCgroupLimit(o); limit > 0 {
		if own {
			limit -= pluginReserve
		}
		if limit < budget {
			budget = limit
			why = fmt.Sprintf("the memory limit of the volume servers' cgroup (%s)", units.Format(limit))
			if own {
				why = fmt.Sprintf("the node plugin's cgroup memory limit, less %s for the plugin itself (%s)", units.Format(pluginReserve), units.Format(limit))
			}
		}
	}
	return budget, why, nil
}

// fitBudget fills MemoryBudget (when zero) and MaxVolumesPerNode (when
// zero), and checks that every volume gets at least VolumeMemory and that
// the budget fits the servers' cgroup.
func (o *Options) fitBudget(e memoryEnv) (string, error) {
	why := "--memory-budget"
	if o.MemoryBudget < 0 {
		return "", fmt.Errorf("--memory-budget=%d: must be positive", o.MemoryBudget)
	}
	if o.MemoryBudget == 0 {
		b, w, err := e.defaultBudget(o)
		if err != nil {
			return "", err
		}
		o.MemoryBudget, why = b, w
	} else if limit, own := e.serverCgroupLimit(o); limit > 0 {
		room := limit
		if own {
			room -= pluginReserve
		}
		if o.MemoryBudget > room {
			less := ""
			if own {
				less = ", less " + units.Format(pluginReserve) + " for the node plugin itself"
			}
			return "", fmt.Errorf("--memory-budget=%s exceeds what the volume servers' cgroup allows (its limit %s%s): the kernel would kill servers before the budget is reached",
				units.Format(o.MemoryBudget), units.Format(limit), less)
		}
	}
	if o.MaxVolumesPerNode < 0 {
		return "", fmt.Errorf("--max-volumes-per-node=%d: must not be negative", o.MaxVolumesPerNode)
	}
	if o.MaxVolumesPerNode == 0 {
		o.MaxVolumesPerNode = o.MemoryBudget / VolumeMemory
		if o.MaxVolumesPerNode == 0 {
			return "", fmt.Errorf("memory budget %s (%s) is smaller than one volume's %s", units.Format(o.MemoryBudget), why, units.Format(VolumeMemory))
		}
	}
	if o.VolumeMemory() < VolumeMemory {
		return "", fmt.Errorf("memory budget %s (%s) gives each of %d volumes %s, less than the %s a volume needs: raise the budget or lower --max-volumes-per-node",
			units.Format(o.MemoryBudget), why, o.MaxVolumesPerNode, units.Format(o.VolumeMemory()), units.Format(VolumeMemory))
	}
	return why, nil
}

// VolumeMemory is each staged volume's share of the memory budget, passed
// to its server as memory= (rounded down to a MiB).
func (o *Options) VolumeMemory() int64 {
	if o.MaxVolumesPerNode <= 0 {
		return 0
	}
	return o.MemoryBudget / o.MaxVolumesPerNode >> 20 << 20
}
