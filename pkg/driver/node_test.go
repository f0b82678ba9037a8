package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/attach"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// Reconnect lets the healer reconnect fake attachments.
func (a *fakeAttacher) Reconnect(ctx context.Context, exp attach.Export) (attach.Device, error) {
	d, ok, _ := a.Find(ctx, exp.ID)
	if !ok {
		return attach.Device{}, attach.ErrNotAttached
	}
	return d, nil
}

type nodeRig struct {
	t     *testing.T
	store *flakyStore
	sup   *fakeSup
	att   *fakeAttacher
	mnt   *fakeMounter
	ns    *NodeServer
	dir   string
}

func newNodeRig(t *testing.T) *nodeRig {
	t.Helper()
	r := &nodeRig{t: t, store: newFlakyStore(), att: newFakeAttacher(), mnt: newFakeMounter(), dir: t.TempDir()}
	r.sup = newFakeSup(t, r.store)
	opts := &Options{Stores: Stores{"default": "mem://unit"}, NodeID: "node-1", StateDir: filepath.Join(r.dir, "state"),
		WALDir: filepath.Join(r.dir, "wal"), Plugin: "/nonexistent/plugin.so", DrainLagBytes: 1 << 30, DrainLagAge: time.Hour}
	var err error
	r.ns, err = NewNodeServer(opts, NodeDeps{Attacher: r.att, Supervisor: r.sup, Mounter: r.mnt, Open: r.store.opener()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.ns.Close()
		r.sup.mu.Lock()
		var servers []*fakeServer
		for _, s := range r.sup.running {
			servers = append(servers, s)
		}
		r.sup.mu.Unlock()
		for _, s := range servers {
			s.exit()
		}
		for _, v := range r.sup.leaked {
			v.Close()
		}
	})
	return r
}

func (r *nodeRig) create(name string, size int64) {
	r.t.Helper()
	if err := vb.CreateOnly(context.Background(), r.store, name, size); err != nil {
		r.t.Fatal(err)
	}
}

func (r *nodeRig) info(name string) vb.Info {
	r.t.Helper()
	inf, err := vb.Inspect(context.Background(), r.store, name)
	if err != nil {
		r.t.Fatal(err)
	}
	return inf
}

func (r *nodeRig) staging(name string) string { return filepath.Join(r.dir, "staging-"+name) }

func (r *nodeRig) stage(vol string, mode csi.VolumeCapability_AccessMode_Mode) error {
	_, err := r.ns.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: "default/" + vol, StagingTargetPath: r.staging(vol), VolumeCapability: mountCapability(mode),
	})
	return err
}

func (r *nodeRig) unstage(vol string) error {
	_, err := r.ns.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: "default/" + vol, StagingTargetPath: r.staging(vol)})
	return err
}

// unstageEventually retries NodeUnstageVolume while it answers Aborted, as
// the CO does: a background heal of the volume holds its operation lock for
// a moment after its health already reads as settled.
func (r *nodeRig) unstageEventually(vol string) error {
	var err error
	testutil.WaitFor(context.Background(), 30*time.Second, func() (bool, error) {
		err = r.unstage(vol)
		return status.Code(err) != codes.Aborted, nil
	})
	return err
}

func (r *nodeRig) health(vol string) []string {
	r.t.Helper()
	h, err := r.ns.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: "default/" + vol})
	if err != nil {
		r.t.Fatal(err)
	}
	var out []string
	for _, e := range h.GetVolumeHealth().GetHealthStatuses() {
		out = append(out, e.GetStatus().String()+":"+e.GetReason())
	}
	return out
}

func (r *nodeRig) server(vol string) *fakeServer {
	r.sup.mu.Lock()
	defer r.sup.mu.Unlock()
	for _, s := range r.sup.running {
		if s.name() == vol {
			return s
		}
	}
	return nil
}

// staged reports whether the node still has state for the volume.
func (r *nodeRig) staged(vol string) bool {
	_, err := os.Stat(filepath.Join(r.dir, "state", "volumes", "default."+vol))
	return err == nil
}

func mountCapability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	}
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
	if contains != "" && !strings.Contains(err.Error(), contains) {
		t.Fatalf("error %q does not mention %q", err, contains)
	}
}

const snw = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER

func TestNodeStageUnstage(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	if !r.mnt.mounted(r.staging("v1")) || r.att.attached() != 1 || r.server("v1") == nil {
		t.Fatalf("after stage: mounted %v, attached %d, server %v", r.mnt.mounted(r.staging("v1")), r.att.attached(), r.server("v1"))
	}
	if inf := r.info("v1"); !inf.Open {
		t.Fatal("volume not open after stage")
	}
	// Idempotent: nothing started, attached or formatted twice.
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	if r.sup.starts != 1 || r.mnt.formats != 1 || r.att.attached() != 1 {
		t.Fatalf("second stage redid work: starts %d formats %d attached %d", r.sup.starts, r.mnt.formats, r.att.attached())
	}
	if h := r.health("v1"); len(h) != 0 {
		t.Fatalf("health of a staged volume: %v", h)
	}
	// Another staging path for the same volume is refused.
	_, err := r.ns.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: "default/v1", StagingTargetPath: r.staging("other"), VolumeCapability: mountCapability(snw)})
	wantCode(t, err, codes.AlreadyExists, "staged at")

	target := filepath.Join(r.dir, "target")
	if _, err := r.ns.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: "default/v1",
		StagingTargetPath: r.staging("v1"), TargetPath: target, VolumeCapability: mountCapability(snw)}); err != nil {
		t.Fatal(err)
	}
	if !r.mnt.mounted(target) {
		t.Fatal("target not mounted")
	}
	// Unstaging while published is refused.
	wantCode(t, r.unstage("v1"), codes.FailedPrecondition, "still published")
	if _, err := r.ns.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "default/v1", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("target still exists: %v", err)
	}
	if err := r.unstage("v1"); err != nil {
		t.Fatal(err)
	}
	if r.mnt.mounted(r.staging("v1")) || r.att.attached() != 0 || r.server("v1") != nil || r.staged("v1") {
		t.Fatal("unstage left something behind")
	}
	if inf := r.info("v1"); inf.Open {
		t.Fatal("volume still open after unstage: not drained")
	}
	// Idempotent.
	if err := r.unstage("v1"); err != nil {
		t.Fatal(err)
	}
}

// nbdkit fails to start: the error says why and nothing is left behind.
func TestNodeStageNbdkitFails(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	r.sup.startErr = errors.New("nbdkit exited before serving (exit status 1): nbdkit: error: cannot open plugin")
	err := r.stage("v1", snw)
	wantCode(t, err, codes.Internal, "cannot open plugin")
	if r.staged("v1") || r.att.attached() != 0 {
		t.Fatal("failed stage left state or an attachment behind")
	}
	// A retry once nbdkit works succeeds.
	r.sup.startErr = nil
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
}

// mkfs fails: the volume is detached, drained and released again.
func TestNodeStageMkfsFails(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	r.mnt.formatErr = errMkfs
	err := r.stage("v1", snw)
	wantCode(t, err, codes.Internal, "mkfs.ext4")
	if r.staged("v1") || r.att.attached() != 0 || r.server("v1") != nil {
		t.Fatal("failed stage left something behind")
	}
	if r.info("v1").Open {
		t.Fatal("volume left open after a failed stage")
	}
}

// The attach step fails: rolled back as well.
func TestNodeStageAttachFails(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	r.att.attachErr = errors.New("attach: nbdfuse did not come up")
	wantCode(t, r.stage("v1", snw), codes.Internal, "nbdfuse")
	if r.staged("v1") || r.server("v1") != nil || r.info("v1").Open {
		t.Fatal("failed stage left something behind")
	}
}

// The store is unreachable: Unavailable (the CO retries), nothing started.
func TestNodeStageBackendDown(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	r.store.setDown(true)
	wantCode(t, r.stage("v1", snw), codes.Unavailable, "connection refused")
	if r.sup.starts != 0 || r.att.attached() != 0 {
		t.Fatal("started something with the store down")
	}
	r.store.setDown(false)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
}

func TestNodeStageMissingVolume(t *testing.T) {
	r := newNodeRig(t)
	wantCode(t, r.stage("nope", snw), codes.NotFound, "")
	if r.staged("nope") {
		t.Fatal("state left for a missing volume")
	}
	_, err := r.ns.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: "default/../etc", StagingTargetPath: r.staging("x"), VolumeCapability: mountCapability(snw)})
	wantCode(t, err, codes.NotFound, "")
	_, err = r.ns.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: "other/v1", StagingTargetPath: r.staging("x"), VolumeCapability: mountCapability(snw)})
	wantCode(t, err, codes.NotFound, "not configured")
}

// The staging mount is busy: unstage fails with FailedPrecondition and
// keeps everything; once free, it completes.
func TestNodeUnstageMountBusy(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.mnt.setBusy(r.staging("v1"), true)
	wantCode(t, r.unstage("v1"), codes.FailedPrecondition, "busy")
	if !r.staged("v1") || r.server("v1") == nil || r.att.attached() != 1 {
		t.Fatal("busy unstage tore something down")
	}
	r.mnt.setBusy(r.staging("v1"), false)
	if err := r.unstage("v1"); err != nil {
		t.Fatal(err)
	}
	if r.staged("v1") || r.info("v1").Open {
		t.Fatal("unstage incomplete")
	}
}

// The device is held: detach fails with FailedPrecondition.
func TestNodeUnstageDeviceBusy(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.att.busy = true
	wantCode(t, r.unstage("v1"), codes.FailedPrecondition, "busy")
	if r.server("v1") == nil {
		t.Fatal("nbdkit stopped while its device is held")
	}
	r.att.busy = false
	if err := r.unstage("v1"); err != nil {
		t.Fatal(err)
	}
}

// nbdkit exits non-zero at unstage (its final drain failed): the state and
// WAL stay, the call is Unavailable, and the retry serves the volume once
// more to drain it.
func TestNodeUnstageDrainFails(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.sup.stopErr = errors.New("nbdkit exit status 1: closing volume: drain at close failed")
	err := r.unstage("v1")
	// The fake's volume did drain, so the store shows it closed: clean.
	if err != nil {
		t.Fatalf("unstage with a drained volume but non-zero exit: %v", err)
	}
	if r.staged("v1") {
		t.Fatal("state kept although the store holds everything")
	}

	// nbdkit dies without draining: the store still shows the volume open
	// with our epoch. Unstage fails, keeping the state and the WAL; the
	// retry serves the volume once more and drains it.
	r.sup.stopErr = nil
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.sup.mu.Lock()
	r.sup.crash = true
	r.sup.mu.Unlock()
	wantCode(t, r.unstage("v1"), codes.Unavailable, "drain at close failed")
	if !r.staged("v1") || !r.info("v1").Open {
		t.Fatal("state dropped although the volume was not drained")
	}
	r.sup.mu.Lock()
	r.sup.crash = false
	r.sup.mu.Unlock()
	starts := r.sup.starts
	if err := r.unstage("v1"); err != nil {
		t.Fatal(err)
	}
	if r.sup.starts != starts+1 || r.staged("v1") || r.info("v1").Open {
		t.Fatalf("retry did not serve and drain the volume: starts %d->%d, staged %v, open %v", starts, r.sup.starts, r.staged("v1"), r.info("v1").Open)
	}
}

// A concurrent request for the same volume is Aborted.
func TestNodeConcurrentAborted(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	release, err := r.ns.locks.acquire("default/v1")
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, r.stage("v1", snw), codes.Aborted, "in progress")
	wantCode(t, r.unstage("v1"), codes.Aborted, "in progress")
	release()
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
}

// nbdkit dies while staged: health says so, and the healer restarts it
// and reconnects the device.
func TestNodeServerDiesAndHeals(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	// Hold the volume's operation lock while nbdkit dies and health is
	// read: the healer restarts nbdkit a second after it died, and a test
	// goroutine descheduled that long on a loaded machine would otherwise
	// find it healed already. The healer's attempt meanwhile fails as
	// in-flight and it retries later.
	release, err := r.ns.locks.acquire("default/v1")
	if err != nil {
		t.Fatal(err)
	}
	r.server("v1").exit()
	h := r.health("v1")
	release()
	if len(h) == 0 || h[0] != "INACCESSIBLE:ServerDown" {
		t.Fatalf("health after nbdkit died: %v", h)
	}
	testutil.Eventually(t, 30*time.Second, "the healer to restart nbdkit", func() (bool, error) {
		srv, h := r.server("v1"), r.health("v1")
		return srv != nil && len(h) == 0, fmt.Errorf("not healed: server %v, health %v", srv, h)
	})
	if r.sup.starts != 2 {
		t.Fatalf("%d starts, want 2", r.sup.starts)
	}
	if err := r.unstageEventually("v1"); err != nil {
		t.Fatal(err)
	}
}

// A restarted node plugin (a new NodeServer over the same state) adopts the
// running server and can unstage.
func TestNodeHealAdopts(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.sup.adoptable = true
	// The old plugin process is gone before the new one starts. Left
	// running, the old server's watcher would take the new server's stop
	// at unstage for a crash and have its healer restart nbdkit a second
	// later, reopening the volume under the unstage when that is slow.
	r.ns.Close()
	ns2, err := NewNodeServer(r.ns.opts, NodeDeps{Attacher: r.att, Supervisor: r.sup, Mounter: r.mnt, Open: r.store.opener()})
	if err != nil {
		t.Fatal(err)
	}
	ns2.Heal(context.Background())
	if r.sup.starts != 1 {
		t.Fatalf("heal started nbdkit again (%d starts) instead of adopting it", r.sup.starts)
	}
	r.ns = ns2
	if h := r.health("v1"); len(h) != 0 {
		t.Fatalf("health after adoption: %v", h)
	}
	if err := r.unstage("v1"); err != nil {
		t.Fatal(err)
	}
	if r.info("v1").Open {
		t.Fatal("not drained")
	}
}

// Another node opens the volume: this node reports it fenced and unstage
// still completes (nothing of ours is left to drain).
func TestNodeFenced(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	other, err := vb.Open(context.Background(), r.store, "v1", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	h := r.health("v1")
	if len(h) == 0 || h[0] != "INACCESSIBLE:Fenced" {
		t.Fatalf("health of a fenced volume: %v", h)
	}
	// The node's metrics say so too.
	want := `
# HELP viperblock_volume_health_abnormal 1 while the volume's health on this node (NodeGetVolumeHealth) reports a condition, else 0.
# TYPE viperblock_volume_health_abnormal gauge
viperblock_volume_health_abnormal{volume_id="default/v1"} 1
`
	if err := promtest.CollectAndCompare(r.ns.Collector(), strings.NewReader(want), "viperblock_volume_health_abnormal"); err != nil {
		t.Fatal(err)
	}
	if n := promtest.CollectAndCount(r.ns.Collector(), "viperblock_volume_health_condition"); n == 0 {
		t.Fatal("no health condition metric for a fenced volume")
	}
	if err := r.unstage("v1"); err != nil {
		t.Fatalf("unstage of a fenced volume: %v", err)
	}
}

func TestNodePublishSingleWriter(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	mode := csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	if err := r.stage("v1", mode); err != nil {
		t.Fatal(err)
	}
	pub := func(target string) error {
		_, err := r.ns.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: "default/v1",
			StagingTargetPath: r.staging("v1"), TargetPath: filepath.Join(r.dir, target), VolumeCapability: mountCapability(mode)})
		return err
	}
	if err := pub("t1"); err != nil {
		t.Fatal(err)
	}
	if err := pub("t1"); err != nil {
		t.Fatalf("republish at the same target: %v", err)
	}
	wantCode(t, pub("t2"), codes.FailedPrecondition, "single writer")
	_, err := r.ns.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: "default/v2",
		StagingTargetPath: r.staging("v2"), TargetPath: filepath.Join(r.dir, "t3"), VolumeCapability: mountCapability(mode)})
	wantCode(t, err, codes.FailedPrecondition, "not staged")
}

// Online expansion: the volume grew in its engine; NodeExpandVolume grows
// the device to the store's size and the filesystem.
func TestNodeExpand(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	if err := r.server("v1").v.Resize(context.Background(), 128<<20); err != nil {
		t.Fatal(err)
	}
	resizes := r.mnt.resizes
	resp, err := r.ns.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{VolumeId: "default/v1",
		VolumePath: r.staging("v1"), CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCapacityBytes() != 128<<20 || r.mnt.resizes != resizes+1 {
		t.Fatalf("capacity %d, resizes %d", resp.GetCapacityBytes(), r.mnt.resizes-resizes)
	}
	// Asking for more than the volume has: Unavailable until it grows.
	_, err = r.ns.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{VolumeId: "default/v1",
		VolumePath: r.staging("v1"), CapacityRange: &csi.CapacityRange{RequiredBytes: 256 << 20}})
	wantCode(t, err, codes.Unavailable, "not grown")
	_, err = r.ns.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{VolumeId: "default/v9", VolumePath: "/x"})
	wantCode(t, err, codes.NotFound, "")
}

func TestNodeStatsNotFound(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	_, err := r.ns.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: "default/v1", VolumePath: "/x"})
	wantCode(t, err, codes.NotFound, "")
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	_, err = r.ns.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: "default/v1", VolumePath: "/elsewhere"})
	wantCode(t, err, codes.NotFound, "")
	resp, err := r.ns.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: "default/v1", VolumePath: r.staging("v1")})
	if err != nil || len(resp.GetUsage()) != 2 {
		t.Fatalf("stats of the staging path: %v %v", resp, err)
	}
}

func TestWALPending(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "v", "03"), 0o700)
	os.WriteFile(filepath.Join(dir, "v", "03", "0000000000000001.wal"), make([]byte, 5000), 0o600)
	os.WriteFile(filepath.Join(dir, "v", "OWNER"), make([]byte, 100), 0o600)
	os.MkdirAll(filepath.Join(dir, "v", "stale-1"), 0o700) // quarantined: not pending
	os.WriteFile(filepath.Join(dir, "v", "stale-1", "03-0000000000000001.wal"), make([]byte, 7000), 0o600)
	n, oldest := walPending(dir, "v")
	if n != 5000 || oldest.IsZero() || time.Since(oldest) > time.Minute {
		t.Fatalf("walPending = %d, %v", n, oldest)
	}
}

// plainAttacher hides the fake's Reconnect, like nbdfuse attachments.
type plainAttacher struct{ attach.Attacher }

// nbdkit dies under an attacher that cannot reconnect (nbdfuse): the
// healer restarts nbdkit, health says the device is disconnected, and
// unstage still drains and cleans up.
func TestNodeServerDiesNoReconnect(t *testing.T) {
	r := newNodeRig(t)
	ns, err := NewNodeServer(r.ns.opts, NodeDeps{Attacher: plainAttacher{r.att}, Supervisor: r.sup, Mounter: r.mnt, Open: r.store.opener()})
	if err != nil {
		t.Fatal(err)
	}
	r.ns.Close()
	r.ns = ns
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.server("v1").exit()
	testutil.Eventually(t, 30*time.Second, "health to show the disconnected device", func() (bool, error) {
		h := r.health("v1")
		return r.server("v1") != nil && len(h) == 1 && h[0] == "INACCESSIBLE:DeviceDisconnected",
			fmt.Errorf("health after a restart without reconnect: %v", h)
	})
	if err := r.unstageEventually("v1"); err != nil {
		t.Fatal(err)
	}
	if r.staged("v1") || r.info("v1").Open {
		t.Fatal("unstage incomplete")
	}
}

// An xfs volume is mounted with nouuid: a clone or restored snapshot has
// its source's UUID, which xfs would refuse next to the mounted source.
func TestNodeStageXFSNoUUID(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	capab := mountCapability(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	capab.GetMount().FsType = "xfs"
	if _, err := r.ns.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: "default/v1", StagingTargetPath: r.staging("v1"), VolumeCapability: capab,
	}); err != nil {
		t.Fatal(err)
	}
	r.mnt.mu.Lock()
	opts := r.mnt.options[r.staging("v1")]
	r.mnt.mu.Unlock()
	if !slices.Contains(opts, "nouuid") {
		t.Fatalf("xfs mounted with %v, want nouuid among them", opts)
	}
}
