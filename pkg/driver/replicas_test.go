package driver

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// replica is one controller process: its own ControllerServer and socket,
// on the store every replica shares.
type replica struct {
	cs  *ControllerServer
	srv *Server
	cl  csi.ControllerClient
	id  csi.IdentityClient
}

func newReplica(t *testing.T, store backend.Store) *replica {
	t.Helper()
	opts := &Options{Stores: Stores{"default": "mem://shared"}, DefaultStore: "default", OwnerWait: time.Second, DriverName: "csi.viperblock.io"}
	cs, err := NewControllerServer(opts, AnyNodeChecker{}, func(context.Context, string) (backend.Store, error) { return store, nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.Close)
	srv, err := NewServer("unix://"+filepath.Join(t.TempDir(), "csi.sock"), opts, Services{Controller: cs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+srv.Path(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &replica{cs: cs, srv: srv, cl: csi.NewControllerClient(conn), id: csi.NewIdentityClient(conn)}
}

// Every controller replica serves every call (the sidecars elect who
// acts): two replicas on one store both answer ControllerGetCapabilities,
// and a CreateVolume retried through the other replica, or sent through
// both at once (a sidecar hand-over), yields one volume.
func TestControllerReplicas(t *testing.T) {
	store := backend.NewMem()
	a, b := newReplica(t, store), newReplica(t, store)
	for i, r := range []*replica{a, b} {
		caps, err := r.cl.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
		if err != nil || len(caps.GetCapabilities()) == 0 {
			t.Fatalf("replica %d: ControllerGetCapabilities: %v %v", i, caps, err)
		}
		if err := r.srv.Ready(ctx); err != nil {
			t.Fatalf("replica %d: not ready: %v", i, err)
		}
		pc, err := r.id.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
		if err != nil || pc.GetCapabilities()[0].GetService().GetType() != csi.PluginCapability_Service_CONTROLLER_SERVICE {
			t.Fatalf("replica %d: GetPluginCapabilities: %v %v", i, pc, err)
		}
	}
	req := func(name string) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: caps(), CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}}
	}

	// A retry through the other replica finds the volume the first made.
	va, err := a.cl.CreateVolume(ctx, req("pvc-retried"))
	if err != nil {
		t.Fatal(err)
	}
	vb, err := b.cl.CreateVolume(ctx, req("pvc-retried"))
	if err != nil {
		t.Fatal(err)
	}
	if va.GetVolume().GetVolumeId() != vb.GetVolume().GetVolumeId() || va.GetVolume().GetCapacityBytes() != vb.GetVolume().GetCapacityBytes() {
		t.Fatalf("the replicas made different volumes: %v and %v", va.GetVolume(), vb.GetVolume())
	}

	// Both at once: each answers with the one volume (the store's
	// compare-and-swap picks the creator; the other finds it).
	for round := 0; round < 20; round++ {
		name := "pvc-race-" + string(rune('a'+round))
		var wg sync.WaitGroup
		got := make([]*csi.CreateVolumeResponse, 2)
		errs := make([]error, 2)
		for i, r := range []*replica{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], errs[i] = r.cl.CreateVolume(ctx, req(name))
			}()
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("round %d: concurrent CreateVolume: %v, %v", round, errs[0], errs[1])
		}
		if got[0].GetVolume().GetVolumeId() != got[1].GetVolume().GetVolumeId() {
			t.Fatalf("round %d: %s and %s", round, got[0].GetVolume().GetVolumeId(), got[1].GetVolume().GetVolumeId())
		}
		// And deleted through both at once: both succeed, nothing is left.
		for i, r := range []*replica{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = r.cl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: got[0].GetVolume().GetVolumeId()})
			}()
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("round %d: concurrent DeleteVolume: %v, %v", round, errs[0], errs[1])
		}
		if _, err := a.cl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: got[0].GetVolume().GetVolumeId()}); err == nil {
			t.Fatalf("round %d: volume still there after both deletes", round)
		}
	}

	// Snapshots likewise: one name, one snapshot, whichever replica acts.
	vol := va.GetVolume().GetVolumeId()
	var wg sync.WaitGroup
	snaps := make([]*csi.CreateSnapshotResponse, 2)
	errs := make([]error, 2)
	for i, r := range []*replica{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			snaps[i], errs[i] = r.cl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-race", SourceVolumeId: vol})
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || snaps[0].GetSnapshot().GetSnapshotId() != snaps[1].GetSnapshot().GetSnapshotId() {
		t.Fatalf("concurrent CreateSnapshot: %v %v; %v %v", snaps[0], errs[0], snaps[1], errs[1])
	}
}
