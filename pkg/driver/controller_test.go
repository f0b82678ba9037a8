package driver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

type ctrlRig struct {
	t     *testing.T
	store *flakyStore
	cs    *ControllerServer
}

func newCtrlRig(t *testing.T) *ctrlRig {
	t.Helper()
	r := &ctrlRig{t: t, store: newFlakyStore()}
	other := newFlakyStore()
	opts := &Options{Stores: Stores{"default": "mem://unit", "other": "mem://other"}, DefaultStore: "default", OwnerWait: time.Second}
	var err error
	r.cs, err = NewControllerServer(opts, StoreNodeChecker{}, func(_ context.Context, u string) (backend.Store, error) {
		if u == "mem://other" {
			return other, nil
		}
		return r.store, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.cs.Close)
	return r
}

var ctx = context.Background()

func caps() []*csi.VolumeCapability { return []*csi.VolumeCapability{mountCapability(snw)} }

func (r *ctrlRig) create(name string, size int64, src *csi.VolumeContentSource) (*csi.CreateVolumeResponse, error) {
	return r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: caps(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeContentSource: src})
}

func (r *ctrlRig) mustCreate(name string, size int64, src *csi.VolumeContentSource) string {
	r.t.Helper()
	resp, err := r.create(name, size, src)
	if err != nil {
		r.t.Fatal(err)
	}
	return resp.GetVolume().GetVolumeId()
}

func (r *ctrlRig) snapshot(name, vol string) (*csi.CreateSnapshotResponse, error) {
	return r.cs.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: vol})
}

func snapSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func volSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func TestCreateVolumeIdempotent(t *testing.T) {
	r := newCtrlRig(t)
	id := r.mustCreate("pvc-1", 10<<20+1, nil)
	if id != "default/pvc-1" {
		t.Fatalf("id %s", id)
	}
	resp, err := r.create("pvc-1", 10<<20+1, nil)
	if err != nil || resp.GetVolume().GetVolumeId() != id || resp.GetVolume().GetCapacityBytes() != 10<<20+4096 {
		t.Fatalf("retry: %v %v", resp, err)
	}
	_, err = r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: caps(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 20 << 20, LimitBytes: 20 << 20}})
	wantCode(t, err, codes.AlreadyExists, "outside the requested range")
	snap, err := r.snapshot("s", id)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.create("pvc-1", 10<<20, snapSource(snap.GetSnapshot().GetSnapshotId()))
	wantCode(t, err, codes.AlreadyExists, "another content source")
}

func TestCreateVolumeArguments(t *testing.T) {
	r := newCtrlRig(t)
	for _, tc := range []struct {
		name string
		req  *csi.CreateVolumeRequest
		code codes.Code
	}{
		{"no name", &csi.CreateVolumeRequest{VolumeCapabilities: caps()}, codes.InvalidArgument},
		{"no caps", &csi.CreateVolumeRequest{Name: "a"}, codes.InvalidArgument},
		{"multi node", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{
			mountCapability(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}}, codes.InvalidArgument},
		{"bad fs", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{{
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: snw},
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ntfs"}}}}}, codes.InvalidArgument},
		{"unknown param", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps(), Parameters: map[string]string{"color": "red"}}, codes.InvalidArgument},
		{"unknown store", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps(), Parameters: map[string]string{"store": "nope"}}, codes.InvalidArgument},
		{"bad drain", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps(), Parameters: map[string]string{"drainInterval": "soon"}}, codes.InvalidArgument},
		{"bad cache", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps(), Parameters: map[string]string{"cache": "1;rm -rf"}}, codes.InvalidArgument},
		{"required > limit", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps(), CapacityRange: &csi.CapacityRange{RequiredBytes: 10, LimitBytes: 5}}, codes.InvalidArgument},
		{"no block fits", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps(), CapacityRange: &csi.CapacityRange{RequiredBytes: 5000, LimitBytes: 8000}}, codes.OutOfRange},
		{"too large", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps(), CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 51}}, codes.OutOfRange},
		{"mutable", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps(), MutableParameters: map[string]string{"x": "y"}}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.cs.CreateVolume(ctx, tc.req)
			wantCode(t, err, tc.code, "")
		})
	}
	// Sidecar parameters are ignored; a long name is hashed into a valid ID.
	long := "pvc-"
	for len(long) < 200 {
		long += "x/y:z"
	}
	resp, err := r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: long, VolumeCapabilities: caps(),
		Parameters: map[string]string{"csi.storage.k8s.io/pvc/name": "data", "fsType": "xfs", "store": "other"}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	if _, err := parseVolumeID(id); err != nil || len(id) > 128 {
		t.Fatalf("ID %q (%d bytes): %v", id, len(id), err)
	}
	if resp.GetVolume().GetVolumeContext()[ParamFsType] != "xfs" || resp.GetVolume().GetCapacityBytes() != 1<<30 {
		t.Fatalf("response %v", resp)
	}
}

func TestClones(t *testing.T) {
	r := newCtrlRig(t)
	src := r.mustCreate("src", 10<<20, nil)
	snap, err := r.snapshot("snap-1", src)
	if err != nil {
		t.Fatal(err)
	}
	sid := snap.GetSnapshot().GetSnapshotId()
	if sid != "default/src@snap-1" || snap.GetSnapshot().GetSizeBytes() != 10<<20 || !snap.GetSnapshot().GetReadyToUse() {
		t.Fatalf("snapshot %v", snap)
	}
	// A clone smaller than its source gets the source's size; larger is fine.
	resp, err := r.create("c1", 4096, snapSource(sid))
	if err != nil || resp.GetVolume().GetCapacityBytes() != 10<<20 {
		t.Fatalf("clone: %v %v", resp, err)
	}
	if _, err := r.create("c1", 4096, snapSource(sid)); err != nil {
		t.Fatalf("clone retry: %v", err)
	}
	resp, err = r.create("c2", 20<<20, volSource(src))
	if err != nil || resp.GetVolume().GetCapacityBytes() != 20<<20 {
		t.Fatalf("volume clone: %v %v", resp, err)
	}
	if _, err := r.create("c2", 20<<20, volSource(src)); err != nil {
		t.Fatalf("volume clone retry: %v", err)
	}
	g, err := r.cs.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: "default/c2"})
	if err != nil || g.GetVolume().GetContentSource().GetVolume().GetVolumeId() != src {
		t.Fatalf("get clone: %v %v", g, err)
	}
	_, err = r.create("c3", 0, snapSource("default/src@nope"))
	wantCode(t, err, codes.NotFound, "")
	_, err = r.create("c4", 0, snapSource("garbage"))
	wantCode(t, err, codes.NotFound, "")
	_, err = r.create("c5", 0, volSource("other/src"))
	wantCode(t, err, codes.InvalidArgument, "stay in their store")
	_, err = r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "c6", VolumeCapabilities: caps(), VolumeContentSource: snapSource(sid),
		CapacityRange: &csi.CapacityRange{LimitBytes: 4096}})
	wantCode(t, err, codes.OutOfRange, "")

	// The source goes, the clones keep their data; deleting twice is fine.
	for i := 0; i < 2; i++ {
		if _, err := r.cs.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := vb.Inspect(ctx, r.store, "c1"); err != nil {
		t.Fatal(err)
	}
	// The snapshot outlives its volume: listed, and its retry succeeds.
	l, err := r.cs.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil || len(l.GetEntries()) != 1 || l.GetEntries()[0].GetSnapshot().GetSnapshotId() != sid {
		t.Fatalf("list after source deletion: %v %v", l, err)
	}
	if _, err := r.snapshot("snap-1", src); err != nil {
		t.Fatalf("snapshot retry after source deletion: %v", err)
	}
}

func TestSnapshots(t *testing.T) {
	r := newCtrlRig(t)
	a := r.mustCreate("a", 1<<20, nil)
	b := r.mustCreate("b", 1<<20, nil)
	if _, err := r.snapshot("s1", a); err != nil {
		t.Fatal(err)
	}
	if _, err := r.snapshot("s1", a); err != nil {
		t.Fatalf("retry: %v", err)
	}
	_, err := r.snapshot("s1", b)
	wantCode(t, err, codes.AlreadyExists, "taken by volume")
	_, err = r.snapshot("s2", "default/missing")
	wantCode(t, err, codes.NotFound, "")
	_, err = r.cs.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s3", SourceVolumeId: a, Parameters: map[string]string{"x": "y"}})
	wantCode(t, err, codes.InvalidArgument, "")

	// A claim left by a delete that stopped half-way is taken over.
	if ok, err := putRecord(ctx, r.store, snapClaimKey("s4"), snapClaim{Volume: "a"}, ""); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, err := r.snapshot("s4", b); err != nil {
		t.Fatalf("stale claim: %v", err)
	}
	for _, n := range []string{"s5", "s6", "s7"} {
		if _, err := r.snapshot(n, b); err != nil {
			t.Fatal(err)
		}
	}
	// Pagination: all five, two at a time, in order, with no repeats.
	var got []string
	token := ""
	for {
		l, err := r.cs.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range l.GetEntries() {
			got = append(got, e.GetSnapshot().GetSnapshotId())
		}
		if token = l.GetNextToken(); token == "" {
			break
		}
	}
	if fmt.Sprint(got) != "[default/a@s1 default/b@s4 default/b@s5 default/b@s6 default/b@s7]" {
		t.Fatalf("pages: %v", got)
	}
	l, _ := r.cs.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: b})
	if len(l.GetEntries()) != 4 {
		t.Fatalf("by volume: %v", l)
	}
	l, _ = r.cs.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: "default/b@s6"})
	if len(l.GetEntries()) != 1 {
		t.Fatalf("by id: %v", l)
	}
	_, err = r.cs.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: "bogus"})
	wantCode(t, err, codes.Aborted, "")

	for i := 0; i < 2; i++ {
		if _, err := r.cs.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "default/a@s1"}); err != nil {
			t.Fatal(err)
		}
	}
	// The name is free again.
	if _, err := r.snapshot("s1", b); err != nil {
		t.Fatalf("reuse of a deleted snapshot's name: %v", err)
	}
	if _, err := r.cs.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "../../etc@x"}); err != nil {
		t.Fatal(err)
	}
}

func TestPublish(t *testing.T) {
	r := newCtrlRig(t)
	id := r.mustCreate("v", 1<<20, nil)
	pub := func(node string, ro bool) error {
		_, err := r.cs.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: node,
			VolumeCapability: mountCapability(snw), Readonly: ro})
		return err
	}
	wantCode(t, pub("n1", false), codes.NotFound, "not known")
	registerNode(ctx, r.store, "n1")
	registerNode(ctx, r.store, "n2")
	if err := pub("n1", false); err != nil {
		t.Fatal(err)
	}
	if err := pub("n1", false); err != nil {
		t.Fatalf("republish: %v", err)
	}
	wantCode(t, pub("n1", true), codes.AlreadyExists, "other options")
	wantCode(t, pub("n2", false), codes.FailedPrecondition, "published to node n1")
	_, err := r.cs.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "default/missing", NodeId: "n1", VolumeCapability: mountCapability(snw)})
	wantCode(t, err, codes.NotFound, "")

	l, err := r.cs.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(l.GetEntries()) != 1 || fmt.Sprint(l.GetEntries()[0].GetStatus().GetPublishedNodeIds()) != "[n1]" {
		t.Fatalf("list: %v %v", l, err)
	}
	_, err = r.cs.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition, "unpublish it first")
	// Unpublishing from another node changes nothing.
	if _, err := r.cs.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "n2"}); err != nil {
		t.Fatal(err)
	}
	if err := pub("n2", false); grpcstatus.Code(err) != codes.FailedPrecondition {
		t.Fatalf("publish to n2 after unpublish from n2: %v", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := r.cs.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "n1"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub("n2", false); err != nil {
		t.Fatalf("publish to n2 after unpublish from n1: %v", err)
	}
}

// A volume left open by a node that died, published nowhere, is fenced and
// deleted; one open and published is not.
func TestDeleteOpenVolume(t *testing.T) {
	r := newCtrlRig(t)
	id := r.mustCreate("v", 1<<20, nil)
	v, err := vb.Open(ctx, r.store, "v", vb.Options{WALDir: t.TempDir(), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := r.cs.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("delete of an abandoned open volume: %v", err)
	}
	if _, err := vb.Inspect(ctx, r.store, "v"); grpcstatus.Code(toStatus(err, "")) != codes.NotFound {
		t.Fatalf("volume still there: %v", err)
	}
}

func TestListVolumesPagination(t *testing.T) {
	r := newCtrlRig(t)
	for i := 0; i < 5; i++ {
		r.mustCreate(fmt.Sprintf("v%d", i), 1<<20, nil)
	}
	l, err := r.cs.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2})
	if err != nil || len(l.GetEntries()) != 2 || l.GetNextToken() != "default/v1" {
		t.Fatalf("page 1: %v %v", l, err)
	}
	// The last volume of the page goes and a new one comes: the next page
	// has neither repeats nor the deleted volume.
	r.cs.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "default/v1"})
	r.mustCreate("v9", 1<<20, nil)
	l, err = r.cs.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: l.GetNextToken()})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range l.GetEntries() {
		got = append(got, e.GetVolume().GetVolumeId())
	}
	if fmt.Sprint(got) != "[default/v2 default/v3 default/v4 default/v9]" || l.GetNextToken() != "" {
		t.Fatalf("page 2: %v (next %q)", got, l.GetNextToken())
	}
	_, err = r.cs.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "invalid-token"})
	wantCode(t, err, codes.Aborted, "")
	_, err = r.cs.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1})
	wantCode(t, err, codes.InvalidArgument, "")
}

// The store is unreachable: calls fail with Unavailable; health reports
// the volume INACCESSIBLE.
func TestControllerBackendDown(t *testing.T) {
	r := newCtrlRig(t)
	id := r.mustCreate("v", 1<<20, nil)
	r.store.setDown(true)
	_, err := r.create("w", 1<<20, nil)
	wantCode(t, err, codes.Unavailable, "connection refused")
	_, err = r.snapshot("s", id)
	wantCode(t, err, codes.Unavailable, "")
	_, err = r.cs.ListVolumes(ctx, &csi.ListVolumesRequest{})
	wantCode(t, err, codes.Unavailable, "")
	h, err := r.cs.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 1 ||
		h.GetVolumeHealth().GetHealthStatuses()[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE {
		t.Fatalf("health with the store down: %v %v", h, err)
	}
	r.store.setDown(false)
	h, err = r.cs.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("health: %v %v", h, err)
	}
}

func TestExpand(t *testing.T) {
	r := newCtrlRig(t)
	id := r.mustCreate("v", 1<<20, nil)
	exp := func(req, lim int64) (*csi.ControllerExpandVolumeResponse, error) {
		return r.cs.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
			CapacityRange: &csi.CapacityRange{RequiredBytes: req, LimitBytes: lim}})
	}
	resp, err := exp(3<<20+1, 0)
	if err != nil || resp.GetCapacityBytes() != 3<<20+4096 || !resp.GetNodeExpansionRequired() {
		t.Fatalf("expand: %v %v", resp, err)
	}
	resp, err = exp(1<<20, 0)
	if err != nil || resp.GetCapacityBytes() != 3<<20+4096 {
		t.Fatalf("smaller request: %v %v", resp, err)
	}
	_, err = exp(1<<20, 2<<20)
	wantCode(t, err, codes.OutOfRange, "")
	_, err = r.cs.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "default/missing", CapacityRange: &csi.CapacityRange{RequiredBytes: 1}})
	wantCode(t, err, codes.NotFound, "")
}

func TestGetCapacity(t *testing.T) {
	dir := t.TempDir()
	opts := &Options{Stores: Stores{"f": "file://" + filepath.Join(dir), "s": "s3://bucket/x"}, DefaultStore: "f"}
	cs, err := NewControllerServer(opts, AnyNodeChecker{}, newFlakyStore().opener())
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	c, err := cs.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil || c.GetAvailableCapacity() <= 0 || c.GetAvailableCapacity() >= maxVolumeSize {
		t.Fatalf("file store capacity: %v %v", c, err)
	}
	c, err = cs.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"store": "s"}})
	if err != nil || c.GetAvailableCapacity() != maxVolumeSize {
		t.Fatalf("s3 capacity: %v %v", c, err)
	}
	_, err = cs.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"store": "nope"}})
	wantCode(t, err, codes.InvalidArgument, "")
}

// Credentials from CSI secrets become a private file named in the store
// URL, never the URL itself; one store handle per distinct secret.
func TestSecretsToCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	var opened []string
	opts := &Options{Stores: Stores{"s": "s3://bucket/x?endpoint=http://127.0.0.1:1", "f": "file:///tmp"}, DefaultStore: "s"}
	set := newStoreSet(opts, dir, func(_ context.Context, u string) (backend.Store, error) {
		opened = append(opened, u)
		return newFlakyStore(), nil
	})
	secrets := map[string]string{"awsAccessKeyID": "AKID", "awsSecretAccessKey": "SECRET/with+chars", "unrelated": "x"}
	for i := 0; i < 2; i++ {
		if _, err := set.get(ctx, "s", secrets); err != nil {
			t.Fatal(err)
		}
	}
	if len(opened) != 1 {
		t.Fatalf("opened %d times", len(opened))
	}
	if strings.Contains(opened[0], "SECRET") || strings.Contains(opened[0], "AKID") {
		t.Fatalf("credentials in the store URL: %s", opened[0])
	}
	u, _ := url.Parse(opened[0])
	path := u.Query().Get("credentials_file")
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file %q: %v %v", path, fi, err)
	}
	b, _ := os.ReadFile(path)
	if string(b) != "AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_ACCESS_KEY=SECRET/with+chars\n" {
		t.Fatalf("credentials file holds %q", b)
	}
	if u.Query().Get("endpoint") != "http://127.0.0.1:1" {
		t.Fatalf("URL lost its parameters: %s", opened[0])
	}
	if _, err := set.get(ctx, "s", map[string]string{"awsAccessKeyID": "A2", "awsSecretAccessKey": "S2"}); err != nil || len(opened) != 2 {
		t.Fatalf("other secrets: %v, %d opens", err, len(opened))
	}
	if _, err := set.get(ctx, "s", nil); err != nil || opened[2] != opts.Stores["s"] {
		t.Fatalf("no secrets: %v %v", err, opened)
	}
	if _, err := set.get(ctx, "f", secrets); err != nil || opened[3] != "file:///tmp" {
		t.Fatalf("file store with secrets: %v %v", err, opened)
	}
	for _, bad := range []map[string]string{
		{"awsAccessKeyID": "only"},
		{"awsAccessKeyID": "a", "awsSecretAccessKey": "two\nlines"},
	} {
		_, err := set.get(ctx, "s", bad)
		wantCode(t, toStatus(err, "x"), codes.InvalidArgument, "")
		if err != nil && strings.Contains(err.Error(), "two") {
			t.Fatalf("error repeats the secret: %v", err)
		}
	}
	_, err = set.get(ctx, "nope", nil)
	wantCode(t, toStatus(err, "x"), codes.NotFound, "")
}

// A snapshot beyond the per-volume limit is ResourceExhausted; deleting one
// makes room.
func TestSnapshotLimit(t *testing.T) {
	r := newCtrlRig(t)
	r.cs.opts.MaxSnapshotsPerVolume = 2
	a := r.mustCreate("a", 1<<20, nil)
	for _, n := range []string{"s1", "s2"} {
		if _, err := r.snapshot(n, a); err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.snapshot("s3", a)
	wantCode(t, err, codes.ResourceExhausted, "limit is 2")
	if _, err := r.snapshot("s2", a); err != nil {
		t.Fatalf("retry of an existing snapshot at the limit: %v", err)
	}
	if _, err := r.cs.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "default/a@s1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.snapshot("s3", a); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
}

// A damaged manifest fails neither ListVolumes nor ListSnapshots: the volume
// is listed with an unknown capacity, the other volumes as usual.
func TestListWithDamagedManifest(t *testing.T) {
	r := newCtrlRig(t)
	for _, n := range []string{"a", "b", "c"} {
		id := r.mustCreate(n, 1<<20, nil)
		if _, err := r.snapshot("s-"+n, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"b/manifest", "c/snapshots/s-c"} {
		raw, _, err := r.store.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		raw[len(raw)-1] ^= 0xff
		if err := r.store.Put(ctx, k, raw); err != nil {
			t.Fatal(err)
		}
	}
	l, err := r.cs.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range l.GetEntries() {
		got = append(got, fmt.Sprintf("%s:%d", e.GetVolume().GetVolumeId(), e.GetVolume().GetCapacityBytes()))
	}
	if fmt.Sprint(got) != "[default/a:1048576 default/b:0 default/c:1048576]" {
		t.Errorf("volumes: %v", got)
	}
	s, err := r.cs.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, e := range s.GetEntries() {
		got = append(got, e.GetSnapshot().GetSnapshotId())
	}
	if fmt.Sprint(got) != "[default/a@s-a default/b@s-b]" {
		t.Errorf("snapshots: %v", got)
	}
	h, err := r.cs.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: "default/b"})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 1 ||
		h.GetVolumeHealth().GetHealthStatuses()[0].GetStatus() != csi.VolumeHealthErrorType_DATA_LOSS {
		t.Errorf("health of the damaged volume: %v %v", h, err)
	}
}

func TestTokenIn(t *testing.T) {
	for _, c := range []struct {
		prefix, token, from string
		skip                bool
	}{
		{"default/", "", "", false},
		{"default/", "default/v1", "v1", false},
		{"default/", "a/v1", "", false},
		{"default/", "other/v1", "", true},
		{"default/", "default-2/v1", "", false}, // '-' sorts before '/'
		{"default/v@", "default/v@s1", "s1", false},
		{"default/v@", "default/w@s1", "", true},
		{"default/v@", "default/v-2@s1", "", false},
	} {
		from, skip := tokenIn(c.prefix, c.token)
		if from != c.from || skip != c.skip {
			t.Errorf("tokenIn(%q, %q) = %q, %v; want %q, %v", c.prefix, c.token, from, skip, c.from, c.skip)
		}
	}
}

func blockCapability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	}
}

// MULTI_NODE_MULTI_WRITER is accepted for block volumes only; such a
// volume may be published to a second node (a live migration's target),
// never a third, and unpublishing one of two keeps the other.
func TestPublishMigratable(t *testing.T) {
	r := newCtrlRig(t)
	const mnmw = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	_, err := r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "fs", VolumeCapabilities: []*csi.VolumeCapability{mountCapability(mnmw)},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	wantCode(t, err, codes.InvalidArgument, "a filesystem cannot be mounted on two nodes")
	_, err = r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "ro", VolumeCapabilities: []*csi.VolumeCapability{
		blockCapability(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)}, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	wantCode(t, err, codes.InvalidArgument, "not supported")
	resp, err := r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vm", VolumeCapabilities: []*csi.VolumeCapability{blockCapability(mnmw)},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	v, err := r.cs.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{blockCapability(mnmw)}})
	if err != nil || v.GetConfirmed() == nil {
		t.Fatalf("validate RWX block: %v %v", v, err)
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		registerNode(ctx, r.store, n)
	}
	pub := func(node string, c *csi.VolumeCapability) error {
		_, err := r.cs.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: node, VolumeCapability: c})
		return err
	}
	unpub := func(node string) {
		t.Helper()
		if _, err := r.cs.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: node}); err != nil {
			t.Fatal(err)
		}
	}
	published := func() string {
		t.Helper()
		g, err := r.cs.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(g.GetStatus().GetPublishedNodeIds())
	}
	if err := pub("n1", blockCapability(mnmw)); err != nil {
		t.Fatal(err)
	}
	wantCode(t, pub("n2", blockCapability(snw)), codes.FailedPrecondition, "published to node n1")
	if err := pub("n2", blockCapability(mnmw)); err != nil {
		t.Fatalf("publish to a second node (migration): %v", err)
	}
	if err := pub("n2", blockCapability(mnmw)); err != nil {
		t.Fatalf("republish to the second node: %v", err)
	}
	wantCode(t, pub("n3", blockCapability(mnmw)), codes.FailedPrecondition, "third node")
	if got := published(); got != "[n1 n2]" {
		t.Fatalf("published to %s", got)
	}
	l, err := r.cs.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(l.GetEntries()) != 1 || fmt.Sprint(l.GetEntries()[0].GetStatus().GetPublishedNodeIds()) != "[n1 n2]" {
		t.Fatalf("list: %v %v", l, err)
	}
	_, err = r.cs.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition, "n1 and n2")
	unpub("n1") // the migration's source, once it is done
	if got := published(); got != "[n2]" {
		t.Fatalf("after unpublishing the source: published to %s", got)
	}
	unpub("n1")
	if err := pub("n3", blockCapability(mnmw)); err != nil {
		t.Fatalf("migrate on to n3: %v", err)
	}
	unpub("n3") // the target failed: the source keeps it
	if got := published(); got != "[n2]" {
		t.Fatalf("after unpublishing a failed target: published to %s", got)
	}
	unpub("n2")
	if got := published(); got != "[]" {
		t.Fatalf("after unpublishing all: published to %s", got)
	}
}
