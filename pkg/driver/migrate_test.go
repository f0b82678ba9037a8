package driver

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// newNodeRigOn is a node rig for node id on r's store: a second node.
func newNodeRigOn(t *testing.T, r *nodeRig, id string) *nodeRig {
	t.Helper()
	o := &nodeRig{t: t, store: r.store, att: newFakeAttacher(), mnt: newFakeMounter(), dir: t.TempDir()}
	o.sup = newFakeSup(t, r.store)
	opts := &Options{Stores: Stores{"default": "mem://unit"}, NodeID: id, StateDir: filepath.Join(o.dir, "state"),
		WALDir: filepath.Join(o.dir, "wal"), Plugin: "/nonexistent/plugin.so", DrainLagBytes: 1 << 30, DrainLagAge: time.Hour}
	var err error
	o.ns, err = NewNodeServer(opts, NodeDeps{Attacher: o.att, Supervisor: o.sup, Mounter: o.mnt, Open: r.store.opener()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		o.ns.Close()
		o.sup.mu.Lock()
		var servers []*fakeServer
		for _, s := range o.sup.running {
			servers = append(servers, s)
		}
		o.sup.mu.Unlock()
		for _, s := range servers {
			s.exit()
		}
	})
	return o
}

func (r *nodeRig) stageBlock(vol string, mode csi.VolumeCapability_AccessMode_Mode) error {
	_, err := r.ns.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: "default/" + vol, StagingTargetPath: r.staging(vol), VolumeCapability: blockCapability(mode),
	})
	return err
}

// A MULTI_NODE_MULTI_WRITER block volume staged on a second node while the
// first has it open is staged in standby (a live migration's target): the
// first keeps serving; the target's handoff takes it over; both nodes then
// unstage cleanly. A standby that never takes over unstages without
// serving the volume.
func TestStageStandby(t *testing.T) {
	const mnmw = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	a := newNodeRig(t)
	b := newNodeRigOn(t, a, "node-2")
	a.create("vm", 1<<20)
	if err := a.stageBlock("vm", mnmw); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(a.sup.lastParams, "standby=true") {
		t.Fatalf("a volume open nowhere was staged in standby: %v", a.sup.lastParams)
	}
	src := a.server("vm")
	if _, err := src.v.WriteAt(make([]byte, vb.BlockSize), 0); err != nil {
		t.Fatal(err)
	}

	// A target that is torn down before switch-over.
	if err := b.stageBlock("vm", mnmw); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(b.sup.lastParams, "standby=true") {
		t.Fatalf("the migration target's nbdkit is not in standby: %v", b.sup.lastParams)
	}
	starts := b.sup.starts
	if err := b.unstage("vm"); err != nil {
		t.Fatalf("unstage of an unused standby: %v", err)
	}
	if b.sup.starts != starts {
		t.Fatal("unstaging a standby served the volume (to drain what was never its own)")
	}
	if b.staged("vm") {
		t.Fatal("state left behind")
	}
	if _, err := src.v.WriteAt(make([]byte, vb.BlockSize), 0); err != nil {
		t.Fatalf("the source stopped serving: %v", err)
	}
	if err := src.v.Flush(); err != nil {
		t.Fatal(err)
	}

	// A migration that completes.
	if err := b.stageBlock("vm", mnmw); err != nil {
		t.Fatal(err)
	}
	dst := b.server("vm")
	dst.handoff(t)
	if _, err := src.v.WriteAt(make([]byte, vb.BlockSize), 0); !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("the source still writes after the handoff: %v", err)
	}
	if _, err := dst.v.WriteAt(make([]byte, vb.BlockSize), vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	if err := a.unstage("vm"); err != nil {
		t.Fatalf("unstage of the migration's source: %v", err)
	}
	if a.sup.starts != 1 {
		t.Fatalf("the source's unstage served the volume again (%d starts)", a.sup.starts)
	}
	if err := b.unstage("vm"); err != nil {
		t.Fatalf("unstage of the migration's target: %v", err)
	}
	if inf := a.info("vm"); inf.Open || inf.WrittenBytes != 2*vb.BlockSize {
		t.Fatalf("after both unstages: %+v", inf)
	}
}

// A single-node volume staged on a second node is taken over as before,
// never in standby.
func TestStageSingleNodeNoStandby(t *testing.T) {
	a := newNodeRig(t)
	b := newNodeRigOn(t, a, "node-2")
	a.create("v", 1<<20)
	if err := a.stageBlock("v", snw); err != nil {
		t.Fatal(err)
	}
	if err := b.stageBlock("v", snw); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(b.sup.lastParams, "standby=true") {
		t.Fatalf("a single-node volume was staged in standby: %v", b.sup.lastParams)
	}
}
