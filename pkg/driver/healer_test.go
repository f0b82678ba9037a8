package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

func (f *fakeSup) startCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts
}

// fencedByHealer reports whether health shows the volume fenced and left
// closed by the healer (and nothing else), with the reason if not.
func fencedByHealer(ns *NodeServer, vol string) (bool, error) {
	h, err := ns.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: "default/" + vol})
	if err != nil {
		return false, err
	}
	es := h.GetVolumeHealth().GetHealthStatuses()
	if len(es) != 1 || es[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE || es[0].GetReason() != "Fenced" ||
		!strings.Contains(es[0].GetMessage(), "another owner") || !strings.Contains(es[0].GetMessage(), "nbdkit was down") {
		return false, fmt.Errorf("health %v", es)
	}
	return true, nil
}

// walSegments lists the .wal files under dir, relative to it.
func walSegments(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".wal") {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// writeFlushDrain writes a block through v and makes it durable in the store.
func writeFlushDrain(v *vb.Volume, b byte, off int64) error {
	if _, err := v.WriteAt(bytes.Repeat([]byte{b}, vb.BlockSize), off); err != nil {
		return err
	}
	if err := v.Flush(); err != nil {
		return err
	}
	return v.Drain(context.Background())
}

// checkStaleWAL checks that the node's WAL of vol holds no live segments
// and that the quarantine (stale-*) holds some.
func checkStaleWAL(t *testing.T, walDir string) {
	t.Helper()
	var live, stale []string
	for _, s := range walSegments(t, walDir) {
		if strings.HasPrefix(s, "stale-") {
			stale = append(stale, s)
		} else {
			live = append(live, s)
		}
	}
	if len(live) != 0 || len(stale) == 0 {
		t.Fatalf("WAL after unstaging a fenced volume: live segments %v, quarantined %v (want none live, some quarantined)", live, stale)
	}
}

// nbdkit dies after another node took the volume over: the healer does not
// restart it (which would take the volume back), health reports the volume
// fenced, the other owner keeps the volume, unstage succeeds without
// draining and quarantines the stale WAL, and a new stage takes ownership.
func TestHealNeverStealsAfterServerDies(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	ctx := context.Background()
	// No drain on a timer: our write stays in the WAL only.
	if _, err := r.ns.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "default/v1", StagingTargetPath: r.staging("v1"),
		VolumeCapability: mountCapability(snw), VolumeContext: map[string]string{ParamDrainInterval: "1h"}}); err != nil {
		t.Fatal(err)
	}
	a := r.server("v1").v
	if _, err := a.WriteAt(bytes.Repeat([]byte{0xaa}, vb.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}

	// Node B takes the volume over (force-detached from here, while our
	// nbdkit is stopped: it answers nothing, and its lease runs out).
	r.server("v1").pause()
	b, err := vb.Open(ctx, r.store, "v1", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Our nbdkit dies (its final drain is fenced).
	if err := r.server("v1").exit(); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("closing the old owner: %v, want fenced", err)
	}
	testutil.Eventually(t, 30*time.Second, "the healer to find the volume taken over", func() (bool, error) {
		return fencedByHealer(r.ns, "v1")
	})
	if n := r.sup.startCount(); n != 1 || r.server("v1") != nil {
		t.Fatalf("the healer restarted nbdkit for a volume another node owns: %d starts", n)
	}
	if st, _, err := r.ns.loadState(volumeID{Store: "default", Vol: "v1"}); err != nil || st.Fenced == "" || !st.Staged {
		t.Fatalf("state after fencing: %+v %v", st, err)
	}

	// B still owns the volume: it writes, flushes and drains, and the
	// store's epoch is B's. Our fenced write is not in the store.
	if err := writeFlushDrain(b, 0xbb, 1<<20); err != nil {
		t.Fatalf("new owner after the healer ran: %v", err)
	}
	if got := r.info("v1").Epoch; got != b.Epoch() {
		t.Fatalf("store epoch %d, want the new owner's %d", got, b.Epoch())
	}
	buf := make([]byte, vb.BlockSize)
	if _, err := b.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, make([]byte, vb.BlockSize)) {
		t.Fatalf("the new owner reads the fenced write of the old one (%v)", err)
	}

	// Publishing a fenced volume is refused.
	_, err = r.ns.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "default/v1", StagingTargetPath: r.staging("v1"),
		TargetPath: filepath.Join(r.dir, "target"), VolumeCapability: mountCapability(snw)})
	wantCode(t, err, codes.FailedPrecondition, "fenced")

	// Unstage succeeds without draining anything and keeps the stale WAL
	// aside, never replayed.
	if err := r.unstageEventually("v1"); err != nil {
		t.Fatalf("unstage of a fenced volume: %v", err)
	}
	if r.staged("v1") || r.att.attached() != 0 || r.mnt.mounted(r.staging("v1")) {
		t.Fatal("unstage left state, a device or a mount behind")
	}
	walDir := filepath.Join(r.dir, "wal", "default", "v1")
	checkStaleWAL(t, walDir)
	if r.sup.startCount() != 1 {
		t.Fatal("unstage served the fenced volume again")
	}
	if err := writeFlushDrain(b, 0xcc, 2<<20); err != nil {
		t.Fatalf("new owner after our unstage: %v", err)
	}
	if got := r.info("v1").Epoch; got != b.Epoch() {
		t.Fatalf("store epoch %d after our unstage, want the new owner's %d", got, b.Epoch())
	}

	// Staging it here again is a new stage: it takes ownership.
	if err := r.stage("v1", snw); err != nil {
		t.Fatalf("stage after fencing: %v", err)
	}
	if got := r.info("v1").Epoch; got <= b.Epoch() {
		t.Fatalf("store epoch %d after staging anew, want more than %d", got, b.Epoch())
	}
	if h := r.health("v1"); len(h) != 0 {
		t.Fatalf("health after staging anew: %v", h)
	}
	if err := writeFlushDrain(b, 0xdd, 3<<20); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("the previous owner was not fenced by the new stage: %v", err)
	}
	checkStaleWAL(t, walDir) // the quarantine stays
	if err := r.unstage("v1"); err != nil {
		t.Fatal(err)
	}
	if r.info("v1").Open {
		t.Fatal("not drained")
	}
}

// The node plugin restarts while another node has taken the volume over and
// our nbdkit is gone: Heal leaves the volume closed and unmounted, reports
// it fenced, and a NodeStageVolume over the fenced state starts afresh.
func TestHealNeverStealsAfterPluginRestart(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	ctx := context.Background()
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.ns.Close()
	b, err := vb.Open(ctx, r.store, "v1", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r.server("v1").exit()
	r.mnt.Unmount(r.staging("v1")) // the staging mount went too

	ns2, err := NewNodeServer(r.ns.opts, NodeDeps{Attacher: r.att, Supervisor: r.sup, Mounter: r.mnt, Open: r.store.opener()})
	if err != nil {
		t.Fatal(err)
	}
	r.ns = ns2
	ns2.Heal(ctx)
	if ok, err := fencedByHealer(ns2, "v1"); !ok {
		t.Fatalf("after Heal: %v", err)
	}
	if r.sup.startCount() != 1 || r.mnt.mounted(r.staging("v1")) {
		t.Fatalf("Heal restarted nbdkit (%d starts) or remounted a volume another node owns", r.sup.startCount())
	}
	if err := writeFlushDrain(b, 0xbb, 0); err != nil {
		t.Fatalf("new owner after Heal: %v", err)
	}
	// Healing again (another restart) changes nothing.
	ns2.Heal(ctx)
	if r.sup.startCount() != 1 {
		t.Fatal("a second Heal restarted nbdkit")
	}

	// The CO stages the volume here again without unstaging first: a new
	// stage, which takes ownership.
	if err := r.stage("v1", snw); err != nil {
		t.Fatalf("stage over a fenced state: %v", err)
	}
	if r.sup.startCount() != 2 || !r.mnt.mounted(r.staging("v1")) || r.info("v1").Epoch <= b.Epoch() {
		t.Fatalf("stage over a fenced state: %d starts, mounted %v, epoch %d (other owner's %d)",
			r.sup.startCount(), r.mnt.mounted(r.staging("v1")), r.info("v1").Epoch, b.Epoch())
	}
	if h := r.health("v1"); len(h) != 0 {
		t.Fatalf("health after staging anew: %v", h)
	}
	if err := r.unstage("v1"); err != nil {
		t.Fatal(err)
	}
	if r.staged("v1") || r.info("v1").Open {
		t.Fatal("unstage incomplete")
	}
}

// The store cannot be reached when the healer runs: it neither restarts
// nbdkit blind nor declares the volume fenced, and restarts it once the
// store is back.
func TestHealStoreDownRetries(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	if err := r.stage("v1", snw); err != nil {
		t.Fatal(err)
	}
	r.ns.Close()
	r.server("v1").exit()
	r.store.setDown(true)
	ns2, err := NewNodeServer(r.ns.opts, NodeDeps{Attacher: r.att, Supervisor: r.sup, Mounter: r.mnt, Open: r.store.opener()})
	if err != nil {
		t.Fatal(err)
	}
	r.ns = ns2
	refused := r.store.refusedCalls()
	ns2.Heal(context.Background())
	if r.store.refusedCalls() == refused {
		t.Fatal("Heal did not ask the store who owns the volume")
	}
	// Wait for a retry to fail as well.
	refused = r.store.refusedCalls()
	testutil.Eventually(t, 30*time.Second, "the healer to retry", func() (bool, error) {
		return r.store.refusedCalls() > refused, nil
	})
	if r.sup.startCount() != 1 {
		t.Fatal("the healer restarted nbdkit without knowing who owns the volume")
	}
	if st, _, err := ns2.loadState(volumeID{Store: "default", Vol: "v1"}); err != nil || st.Fenced != "" {
		t.Fatalf("state with the store down: %+v %v", st, err)
	}
	r.store.setDown(false)
	testutil.Eventually(t, 60*time.Second, "the healer to restart nbdkit", func() (bool, error) {
		srv, h := r.server("v1"), r.health("v1")
		return srv != nil && len(h) == 0, fmt.Errorf("not healed: server %v, health %v", srv, h)
	})
	if err := r.unstageEventually("v1"); err != nil {
		t.Fatal(err)
	}
	if r.staged("v1") || r.info("v1").Open {
		t.Fatal("unstage incomplete")
	}
}

// die ends the fake nbdkit as a crash would: the volume is neither flushed
// nor drained (it is leaked, as in fakeSup's crash), its WAL stays.
func (s *fakeServer) die() {
	s.pause() // a dead process answers nothing
	s.once.Do(func() {
		s.sup.mu.Lock()
		delete(s.sup.running, s.socket)
		s.sup.leaked = append(s.sup.leaked, s.v)
		s.sup.mu.Unlock()
		close(s.done)
	})
}

// Another node takes the volume over after the healer's ownership check
// passed and before the restarted nbdkit opens it: the nbdkit (started
// with resume_only=true) refuses to take the volume back, and the healer
// fences the volume exactly as when its check fails. The new owner keeps
// the volume; our WAL is left as it was, then quarantined at unstage.
func TestHealNeverStealsTakeoverAfterCheck(t *testing.T) {
	r := newNodeRig(t)
	r.create("v1", 64<<20)
	ctx := context.Background()
	if _, err := r.ns.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "default/v1", StagingTargetPath: r.staging("v1"),
		VolumeCapability: mountCapability(snw), VolumeContext: map[string]string{ParamDrainInterval: "1h"}}); err != nil {
		t.Fatal(err)
	}
	r.sup.mu.Lock()
	stageParams := r.sup.lastParams
	r.sup.mu.Unlock()
	if param(stageParams, "resume_only") != "" {
		t.Fatalf("NodeStageVolume started nbdkit with %v: a stage takes ownership, it does not resume", stageParams)
	}
	a := r.server("v1").v
	if _, err := a.WriteAt(bytes.Repeat([]byte{0xaa}, vb.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	walDir := filepath.Join(r.dir, "wal", "default", "v1")
	segs := walSegments(t, walDir)
	if len(segs) == 0 {
		t.Fatal("the flushed write is in no WAL segment")
	}

	// Node B takes the volume over just as the restarted nbdkit opens it.
	var b *vb.Volume
	r.sup.mu.Lock()
	r.sup.beforeOpen = func(params []string) {
		if b != nil {
			return
		}
		var err error
		if b, err = vb.Open(ctx, r.store, "v1", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1}); err != nil {
			t.Errorf("takeover: %v", err)
		}
	}
	r.sup.mu.Unlock()
	r.server("v1").die()
	testutil.Eventually(t, 30*time.Second, "the healer to find the volume taken over", func() (bool, error) {
		return fencedByHealer(r.ns, "v1")
	})
	r.sup.mu.Lock()
	healParams := r.sup.lastParams
	r.sup.mu.Unlock()
	if b == nil {
		t.Fatal("the healer never tried to restart nbdkit")
	}
	defer b.Close()
	if param(healParams, "resume_only") != "true" {
		t.Fatalf("the healer restarted nbdkit with %v, want resume_only=true", healParams)
	}
	if n := r.sup.startCount(); n != 2 || r.server("v1") != nil {
		t.Fatalf("%d starts, server %v: want one refused restart and no server", n, r.server("v1"))
	}
	if got := r.info("v1").Epoch; got != b.Epoch() {
		t.Fatalf("store epoch %d, want the new owner's %d: the heal stole the volume", got, b.Epoch())
	}
	if got := walSegments(t, walDir); strings.Join(got, ",") != strings.Join(segs, ",") {
		t.Fatalf("WAL segments %v after the refused restart, want %v untouched", got, segs)
	}
	if err := writeFlushDrain(b, 0xbb, 1<<20); err != nil {
		t.Fatalf("new owner after the heal: %v", err)
	}
	// Healing again changes nothing: the volume stays fenced.
	r.ns.Heal(ctx)
	if r.sup.startCount() != 2 {
		t.Fatal("a second Heal restarted nbdkit for a fenced volume")
	}
	if err := r.unstageEventually("v1"); err != nil {
		t.Fatalf("unstage of a fenced volume: %v", err)
	}
	checkStaleWAL(t, walDir)
	if got := r.info("v1").Epoch; got != b.Epoch() {
		t.Fatalf("store epoch %d after our unstage, want the new owner's %d", got, b.Epoch())
	}
}
