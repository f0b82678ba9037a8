package driver

import (
	"io/fs"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// fakeMemEnv serves files from a map.
func fakeMemEnv(files map[string]string) memoryEnv {
	return memoryEnv{procRoot: "/proc", sysCgroup: "/sys/fs/cgroup", read: func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, fs.ErrNotExist
	}}
}

const meminfo16G = "MemTotal:       16777216 kB\nMemFree:         1000 kB\n"

func TestFitBudget(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		name       string
		opts       Options
		files      map[string]string
		budget     int64
		maxVolumes int64
		err        string
	}{
		{name: "a quarter of the node", files: map[string]string{"/proc/meminfo": meminfo16G},
			budget: 4 * gib, maxVolumes: 4 * gib / VolumeMemory},
		{name: "own cgroup v2 limit, less the plugin's reserve",
			files: map[string]string{"/proc/meminfo": meminfo16G, "/proc/self/cgroup": "0::/kubepods/pod1/c1\n",
				"/sys/fs/cgroup/kubepods/pod1/c1/memory.max": "2415919104\n"}, // 2.25 GiB
			budget: 2 * gib, maxVolumes: 21},
		{name: "own cgroup v1 limit",
			files: map[string]string{"/proc/meminfo": meminfo16G, "/proc/self/cgroup": "5:cpu,cpuacct:/x\n4:memory:/kubepods/c1\n",
				"/sys/fs/cgroup/memory/kubepods/c1/memory.limit_in_bytes": "1342177280\n"}, // 1.25 GiB
			budget: gib, maxVolumes: 10},
		{name: "an unlimited own cgroup", files: map[string]string{"/proc/meminfo": meminfo16G, "/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "max\n"},
			budget: 4 * gib, maxVolumes: 42},
		{name: "the servers' cgroup limit, whole", opts: Options{ServerCgroup: "viperblock-volumes", CgroupRoot: "/host/cg"},
			files: map[string]string{"/proc/meminfo": meminfo16G, "/host/cg/viperblock-volumes/memory.max": "1073741824\n",
				"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "268435456\n"}, // its own small limit does not count
			budget: gib, maxVolumes: 10},
		{name: "explicit budget and volumes", opts: Options{MemoryBudget: 6 * gib, MaxVolumesPerNode: 64},
			files: map[string]string{"/proc/meminfo": meminfo16G}, budget: 6 * gib, maxVolumes: 64},
		{name: "explicit budget, more than a quarter of the node", opts: Options{MemoryBudget: 12 * gib},
			files: map[string]string{"/proc/meminfo": meminfo16G}, budget: 12 * gib, maxVolumes: 128},
		{name: "too many volumes for the budget", opts: Options{MemoryBudget: gib, MaxVolumesPerNode: 20},
			files: map[string]string{}, err: "less than the 96 MiB a volume needs"},
		{name: "a budget beyond the servers' cgroup", opts: Options{MemoryBudget: 2 * gib, ServerCgroup: "v", CgroupRoot: "/cg"},
			files: map[string]string{"/cg/v/memory.max": "1073741824"}, err: "exceeds what the volume servers' cgroup allows"},
		{name: "a budget beyond our own cgroup", opts: Options{MemoryBudget: gib},
			files: map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "1073741824"}, err: "less 256 MiB for the node plugin"},
		{name: "a budget below one volume", opts: Options{MemoryBudget: 64 << 20}, files: map[string]string{}, err: "smaller than one volume's"},
		{name: "no meminfo", files: map[string]string{}, err: "node's memory unknown"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := c.opts
			why, err := o.fitBudget(fakeMemEnv(c.files))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got %v, want an error with %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.MemoryBudget != c.budget || o.MaxVolumesPerNode != c.maxVolumes {
				t.Fatalf("budget %d, %d volumes (%s); want %d, %d", o.MemoryBudget, o.MaxVolumesPerNode, why, c.budget, c.maxVolumes)
			}
			if share := o.VolumeMemory(); share < VolumeMemory || share*o.MaxVolumesPerNode > o.MemoryBudget || share%(1<<20) != 0 {
				t.Fatalf("share %d of %d for %d volumes", share, o.MemoryBudget, o.MaxVolumesPerNode)
			}
			t.Logf("%s: %d MiB for %d volumes of %d MiB", why, o.MemoryBudget>>20, o.MaxVolumesPerNode, o.VolumeMemory()>>20)
		})
	}
}

// NodeStage refuses a volume beyond MaxVolumesPerNode with
// ResourceExhausted, stages again one already staged, and has room again
// after an unstage; each server gets memory= with its share.
func TestStageWithinMaxVolumes(t *testing.T) {
	r := newNodeRig(t)
	r.sup.help = "memory=<SIZE> this server's memory share"
	r.ns.opts.MaxVolumesPerNode = 2
	r.ns.opts.MemoryBudget = 256 << 20
	mode := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	for _, v := range []string{"a", "b", "c"} {
		r.create(v, 16<<20)
	}
	for _, v := range []string{"a", "b"} {
		if err := r.stage(v, mode); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := param(r.sup.lastParams, "memory"), "134217728"; got != want {
		t.Errorf("memory=%s, want %s (128 MiB, half the budget)", got, want)
	}
	wantCode(t, r.stage("c", mode), codes.ResourceExhausted, "limit")
	if err := r.stage("a", mode); err != nil {
		t.Fatalf("staging a staged volume again: %v", err)
	}
	if err := r.unstage("b"); err != nil {
		t.Fatal(err)
	}
	if err := r.stage("c", mode); err != nil {
		t.Fatalf("after an unstage: %v", err)
	}
}

// A plugin without memory= gets none (an older plugin would refuse it).
func TestNoMemoryParamForAnOldPlugin(t *testing.T) {
	r := newNodeRig(t)
	r.create("a", 16<<20)
	if err := r.stage("a", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER); err != nil {
		t.Fatal(err)
	}
	if got := param(r.sup.lastParams, "memory"); got != "" {
		t.Errorf("memory=%s passed to a plugin without it", got)
	}
}
