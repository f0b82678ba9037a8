package e2e

// testdriver.yaml, the upstream External Storage suite's definition of the
// driver, checked without a cluster. Upstream decodes it leniently (an
// unknown field or a misspelt capability is ignored, and the tests it would
// have enabled silently do not run), so this test decodes it strictly,
// checks every capability name against upstream's list, and checks each
// declared capability against what the driver advertises over CSI and
// what deploy/kubernetes ships. It also checks the subset list and that
// conformance.sh names the same classes.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/viperblock/viperblock-csi/pkg/driver"
	"github.com/viperblock/viperblock-csi/pkg/units"
)

const (
	testDriverFile = "testdriver.yaml"
	subsetFile     = "conformance-subset.txt"
	conformanceSh  = "conformance.sh"
	// maxVolumeBytes is the engine's largest volume (pkg/driver maxVolumeSize).
	maxVolumeBytes = 1 << 50
)

// upstreamCapabilities are the capability names of
// k8s.io/kubernetes/test/e2e/storage/framework/testdriver.go at the
// Kubernetes version the harness builds (lib.sh K8S_VERSION). testdriver.yaml
// must decide each one explicitly.
var upstreamCapabilities = []string{
	"persistence", "block", "fsGroup", "volumeMountGroup", "exec",
	"snapshotDataSource", "snapshotMetadata", "groupSnapshot", "pvcDataSource",
	"multipods", "RWX", "controllerExpansion", "nodeExpansion",
	"offlineExpansion", "onlineExpansion", "volumeLimits", "singleNodeVolume",
	"topology", "capacity", "FSResizeFromSourceNotSupported",
	"readWriteOncePod", "multiplePVsSameID", "capReadOnlyMany", "seLinuxMount",
}

type classRef struct {
	FromName              bool
	FromFile              string
	FromExistingClassName string
}

// testDriverDef mirrors the fields of upstream's driverDefinition
// (test/e2e/storage/external/external.go) and DriverInfo that a definition
// may set.
type testDriverDef struct {
	StorageClass          classRef
	SnapshotClass         classRef
	GroupSnapshotClass    classRef
	VolumeAttributesClass classRef
	InlineVolumes         []struct {
		Attributes map[string]string
		Shared     bool
		ReadOnly   bool
	}
	ClientNodeName string
	NodeSelectors  map[string]string
	Timeouts       map[string]string
	DriverInfo     struct {
		Name               string
		InTreePluginName   string
		MaxFileSize        int64
		SupportedSizeRange struct {
			Min  string
			Max  string
			Step string
		}
		SupportedFsType      map[string]struct{}
		SupportedMountOption map[string]struct{}
		RequiredMountOption  map[string]struct{}
		Capabilities         map[string]bool
		RequiredAccessModes  []string
		TopologyKeys         []string
		NumAllowedTopologies int
		StressTestOptions    *struct {
			NumPods     int
			NumRestarts int
		}
		VolumeSnapshotStressTestOptions *struct {
			NumPods      int
			NumSnapshots int
		}
	}
}

// loadTestDriver decodes data strictly: unknown fields fail, and so do keys
// that match a field only case-insensitively (encoding/json accepts those;
// upstream's decoder does not).
func loadTestDriver(data []byte) (*testDriverDef, error) {
	js, err := utilyaml.ToJSON(data)
	if err != nil {
		return nil, err
	}
	var def testDriverDef
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&def); err != nil {
		return nil, err
	}
	canonical, err := json.Marshal(&def)
	if err != nil {
		return nil, err
	}
	var have, want any
	if err := json.Unmarshal(js, &have); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(canonical, &want); err != nil {
		return nil, err
	}
	if err := sameKeys("", have, want); err != nil {
		return nil, err
	}
	return &def, nil
}

// sameKeys reports a key of have that want (the re-encoded struct, with
// every field) lacks, by exact spelling. Maps of data (capabilities, fs
// types) re-encode with the same keys.
func sameKeys(path string, have, want any) error {
	hm, ok := have.(map[string]any)
	if !ok {
		return nil
	}
	wm, _ := want.(map[string]any)
	for k, v := range hm {
		w, ok := wm[k]
		if !ok {
			return fmt.Errorf("unknown field %s%s (fields are spelt as upstream's Go fields)", path, k)
		}
		if err := sameKeys(path+k+".", v, w); err != nil {
			return err
		}
	}
	return nil
}

func readTestDriver(t *testing.T) *testDriverDef {
	t.Helper()
	data, err := os.ReadFile(testDriverFile)
	if err != nil {
		t.Fatal(err)
	}
	def, err := loadTestDriver(data)
	if err != nil {
		t.Fatalf("%s: %v", testDriverFile, err)
	}
	return def
}

func TestConformanceTestDriverDecodingIsStrict(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":     "DriverInfo:\n  Name: x\n  Capabilites: {block: true}\n",
		"lower-case field":  "DriverInfo:\n  name: x\n",
		"nested misspelled": "StorageClass:\n  FromExistingClass: x\n",
	} {
		if _, err := loadTestDriver([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	if _, err := loadTestDriver([]byte("DriverInfo:\n  Name: x\n  Capabilities: {block: true}\n")); err != nil {
		t.Errorf("a valid definition: %v", err)
	}
}

// advertised is what the driver tells a CO over CSI.
type advertised struct {
	controller map[csi.ControllerServiceCapability_RPC_Type]bool
	node       map[csi.NodeServiceCapability_RPC_Type]bool
	plugin     map[string]bool
}

func driverAdvertises(t *testing.T) advertised {
	t.Helper()
	ctx := context.Background()
	a := advertised{
		controller: map[csi.ControllerServiceCapability_RPC_Type]bool{},
		node:       map[csi.NodeServiceCapability_RPC_Type]bool{},
		plugin:     map[string]bool{},
	}
	cc, err := (&driver.ControllerServer{}).ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cc.GetCapabilities() {
		a.controller[c.GetRpc().GetType()] = true
	}
	nc, err := (&driver.NodeServer{}).NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range nc.GetCapabilities() {
		a.node[c.GetRpc().GetType()] = true
	}
	pc, err := (&driver.IdentityServer{}).GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range pc.GetCapabilities() {
		if s := c.GetService(); s != nil {
			a.plugin["service/"+s.GetType().String()] = true
		}
		if e := c.GetVolumeExpansion(); e != nil {
			a.plugin["expansion/"+e.GetType().String()] = true
		}
	}
	return a
}

// TestConformanceTestDriver checks testdriver.yaml against the driver and
// the shipped manifests.
func TestConformanceTestDriver(t *testing.T) {
	def := readTestDriver(t)
	di := def.DriverInfo
	caps := di.Capabilities

	if di.Name != driverName {
		t.Errorf("DriverInfo.Name %q, want %q", di.Name, driverName)
	}
	for c := range caps {
		if !slices.Contains(upstreamCapabilities, c) {
			t.Errorf("capability %q is not one of upstream's (a typo is silently ignored there): %v", c, upstreamCapabilities)
		}
	}
	for _, c := range upstreamCapabilities {
		if _, ok := caps[c]; !ok {
			t.Errorf("capability %q is not decided: declare it true or false", c)
		}
	}

	// What the suite would need to run tests this driver cannot: no inline
	// volumes (the CSIDriver lists only Persistent), no topology keys.
	if len(def.InlineVolumes) != 0 {
		t.Error("InlineVolumes: the driver has no CSI ephemeral volumes (CSIDriver volumeLifecycleModes: Persistent)")
	}
	if len(di.TopologyKeys) != 0 || caps["topology"] {
		t.Error("topology: volumes are not tied to nodes")
	}
	if def.ClientNodeName != "" || len(def.NodeSelectors) != 0 {
		t.Error("ClientNodeName/NodeSelectors: the driver runs on every node")
	}

	// Sizes: within the engine's limits.
	minQ, err := resource.ParseQuantity(di.SupportedSizeRange.Min)
	if err != nil {
		t.Fatalf("SupportedSizeRange.Min: %v", err)
	}
	maxQ, err := resource.ParseQuantity(di.SupportedSizeRange.Max)
	if err != nil {
		t.Fatalf("SupportedSizeRange.Max: %v", err)
	}
	if minQ.Cmp(maxQ) > 0 || maxQ.Value() > maxVolumeBytes || minQ.Value() < 4096 {
		t.Errorf("SupportedSizeRange [%s, %s] is not within [4KiB, 1PiB]", &minQ, &maxQ)
	}
	if di.MaxFileSize <= 0 || di.MaxFileSize >= minQ.Value() {
		t.Errorf("MaxFileSize %d: volume_io writes files up to it into a volume of %s", di.MaxFileSize, &minQ)
	}

	// Against what the driver advertises over CSI.
	a := driverAdvertises(t)
	for _, c := range []struct {
		capability string
		advertised bool
		what       string
	}{
		{"snapshotDataSource", a.controller[csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT], "controller CREATE_DELETE_SNAPSHOT"},
		{"pvcDataSource", a.controller[csi.ControllerServiceCapability_RPC_CLONE_VOLUME], "controller CLONE_VOLUME"},
		{"controllerExpansion", a.controller[csi.ControllerServiceCapability_RPC_EXPAND_VOLUME], "controller EXPAND_VOLUME"},
		{"nodeExpansion", a.node[csi.NodeServiceCapability_RPC_EXPAND_VOLUME], "node EXPAND_VOLUME"},
		{"onlineExpansion", a.plugin["expansion/ONLINE"], "plugin VolumeExpansion ONLINE"},
		{"topology", a.plugin["service/VOLUME_ACCESSIBILITY_CONSTRAINTS"], "plugin VOLUME_ACCESSIBILITY_CONSTRAINTS"},
		{"volumeMountGroup", a.node[csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP], "node VOLUME_MOUNT_GROUP"},
		{"groupSnapshot", a.plugin["service/GROUP_CONTROLLER_SERVICE"], "plugin GROUP_CONTROLLER_SERVICE"},
		{"readWriteOncePod", a.controller[csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER] &&
			a.node[csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER], "SINGLE_NODE_MULTI_WRITER (controller and node)"},
	} {
		if caps[c.capability] != c.advertised {
			t.Errorf("capability %s: %v, but the driver advertises %s: %v", c.capability, caps[c.capability], c.what, c.advertised)
		}
	}
	// Offline expansion needs only the controller (the store is grown
	// while no node has the volume open); ONLINE implies it in CSI.
	if caps["offlineExpansion"] && !a.controller[csi.ControllerServiceCapability_RPC_EXPAND_VOLUME] {
		t.Error("offlineExpansion without controller EXPAND_VOLUME")
	}
	if caps["multipods"] && !a.node[csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME] {
		t.Error("multipods: the volume is shared by the pods of a node through its staging mount (STAGE_UNSTAGE_VOLUME)")
	}
	// The driver serves a volume on one node at a time.
	for _, c := range []string{"RWX", "capReadOnlyMany", "multiplePVsSameID", "singleNodeVolume", "snapshotMetadata", "seLinuxMount", "FSResizeFromSourceNotSupported"} {
		if caps[c] {
			t.Errorf("capability %s: the driver does not have it (CONFORMANCE.md)", c)
		}
	}

	// Against the production overlay the e2e harness deploys.
	o := decodeAll(t, "production", render(t, filepath.Join(deployDir, "overlays", "production")))
	csiDriver := one[*storagev1.CSIDriver](t, o, "CSIDriver")
	if csiDriver.Name != di.Name {
		t.Errorf("CSIDriver %q, DriverInfo.Name %q", csiDriver.Name, di.Name)
	}
	fsGroupPolicy := storagev1.ReadWriteOnceWithFSTypeFSGroupPolicy
	if csiDriver.Spec.FSGroupPolicy != nil {
		fsGroupPolicy = *csiDriver.Spec.FSGroupPolicy
	}
	if caps["fsGroup"] != (fsGroupPolicy != storagev1.NoneFSGroupPolicy) {
		t.Errorf("capability fsGroup %v, CSIDriver fsGroupPolicy %s", caps["fsGroup"], fsGroupPolicy)
	}
	storageCapacity := csiDriver.Spec.StorageCapacity != nil && *csiDriver.Spec.StorageCapacity
	if caps["capacity"] != storageCapacity {
		t.Errorf("capability capacity %v, CSIDriver storageCapacity %v", caps["capacity"], storageCapacity)
	}
	if caps["capacity"] && !a.controller[csi.ControllerServiceCapability_RPC_GET_CAPACITY] {
		t.Error("capability capacity without controller GET_CAPACITY")
	}
	for _, m := range csiDriver.Spec.VolumeLifecycleModes {
		if m == storagev1.VolumeLifecycleEphemeral {
			t.Error("the CSIDriver lists the Ephemeral lifecycle mode: declare InlineVolumes in testdriver.yaml")
		}
	}
	var node *appsv1.DaemonSet
	for _, ds := range all[*appsv1.DaemonSet](o) {
		if ds.Name == "viperblock-csi-node" {
			node = ds
		}
	}
	if node == nil {
		t.Fatal("no DaemonSet viperblock-csi-node")
	}
	// The node plugin always reports a limit: --max-volumes-per-node, or
	// its memory budget divided by driver.VolumeMemory.
	limit := int64(0)
	if v, ok := argPrefix(container(t, &node.Spec.Template.Spec, "node"), "--max-volumes-per-node="); ok {
		if limit, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Errorf("--max-volumes-per-node=%s: %v", v, err)
		}
	} else if v, ok := argPrefix(container(t, &node.Spec.Template.Spec, "node"), "--memory-budget="); ok {
		b, err := units.Parse(v)
		if err != nil {
			t.Errorf("--memory-budget=%s: %v", v, err)
		}
		limit = b / driver.VolumeMemory
	} else {
		limit = 1 // derived from the node's memory, at least one volume
	}
	if caps["volumeLimits"] != (limit > 0) {
		t.Errorf("capability volumeLimits %v, node plugin --max-volumes-per-node %d", caps["volumeLimits"], limit)
	}

	// The classes it names are shipped, for this driver.
	var sc *storagev1.StorageClass
	fsClasses := map[string]bool{}
	for _, c := range all[*storagev1.StorageClass](o) {
		if c.Name == def.StorageClass.FromExistingClassName {
			sc = c
		}
		if c.Provisioner == driverName {
			fsClasses[c.Parameters["csi.storage.k8s.io/fstype"]] = true
		}
	}
	switch {
	case def.StorageClass.FromName || def.StorageClass.FromFile != "":
		t.Error("StorageClass: use FromExistingClassName, a shipped class")
	case sc == nil:
		t.Errorf("StorageClass.FromExistingClassName %q is not a shipped StorageClass", def.StorageClass.FromExistingClassName)
	default:
		if sc.Provisioner != driverName {
			t.Errorf("StorageClass %s: provisioner %q", sc.Name, sc.Provisioner)
		}
		if caps["controllerExpansion"] && (sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion) {
			t.Errorf("StorageClass %s does not allow expansion", sc.Name)
		}
		if sc.VolumeBindingMode != nil && *sc.VolumeBindingMode != storagev1.VolumeBindingImmediate {
			t.Errorf("StorageClass %s: binding mode %s (the driver has no topology)", sc.Name, *sc.VolumeBindingMode)
		}
	}
	for fs := range di.SupportedFsType {
		if fs != "" && !fsClasses[fs] {
			t.Errorf("SupportedFsType %q: no shipped StorageClass of %s makes it", fs, driverName)
		}
	}
	if _, ok := di.SupportedFsType[""]; !ok {
		t.Error(`SupportedFsType lacks "" (the class's default)`)
	}
	var vsc *snapshotv1.VolumeSnapshotClass
	for _, c := range all[*snapshotv1.VolumeSnapshotClass](o) {
		if c.Name == def.SnapshotClass.FromExistingClassName {
			vsc = c
		}
	}
	if vsc == nil {
		t.Errorf("SnapshotClass.FromExistingClassName %q is not a shipped VolumeSnapshotClass", def.SnapshotClass.FromExistingClassName)
	} else if vsc.Driver != driverName {
		t.Errorf("VolumeSnapshotClass %s: driver %q", vsc.Name, vsc.Driver)
	}
	if def.GroupSnapshotClass != (classRef{}) || def.VolumeAttributesClass != (classRef{}) {
		t.Error("GroupSnapshotClass/VolumeAttributesClass: the driver has no group snapshots and no ControllerModifyVolume")
	}

	// conformance.sh checks the same classes in the cluster.
	sh, err := os.ReadFile(conformanceSh)
	if err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]string{
		"CONFORMANCE_STORAGECLASS":  def.StorageClass.FromExistingClassName,
		"CONFORMANCE_SNAPSHOTCLASS": def.SnapshotClass.FromExistingClassName,
	} {
		m := regexp.MustCompile(`(?m)^` + v + `=(\S+)$`).FindSubmatch(sh)
		if m == nil || string(m[1]) != want {
			t.Errorf("%s: %s is not %q", conformanceSh, v, want)
		}
	}
}

// TestConformanceSubset checks the subset list's form; that each line names
// a spec of the selection is checked by conformance_dryrun and
// conformance_run, which have e2e.test.
func TestConformanceSubset(t *testing.T) {
	f, err := os.Open(subsetFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	var specs []string
	s := bufio.NewScanner(f)
	for n := 1; s.Scan(); n++ {
		l := s.Text()
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if l != strings.TrimSpace(l) {
			t.Errorf("%s:%d: leading or trailing blanks", subsetFile, n)
		}
		if !strings.HasPrefix(l, "[Testpattern: ") {
			t.Errorf("%s:%d: %q does not start with the test pattern", subsetFile, n, l)
		}
		if strings.Contains(l, "[Serial]") || strings.Contains(l, "[Disruptive]") {
			t.Errorf("%s:%d: a [Serial] or [Disruptive] spec in the subset, which runs specs in parallel", subsetFile, n)
		}
		if seen[l] {
			t.Errorf("%s:%d: duplicate", subsetFile, n)
		}
		seen[l] = true
		specs = append(specs, l)
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if len(specs) < 20 {
		t.Errorf("%s: %d specs, want at least 20", subsetFile, len(specs))
	}
	// The areas the subset must cover.
	for _, area := range []string{"volumes should store data", "(block volmode)", "(xfs)", "(ext4)",
		"snapshot", "pvc data source", "offline PVC expansion", "while pod is using it",
		"multiVolume", "fsgroupchangepolicy", "subPath", "volumeMode", "volumeIO"} {
		if !slices.ContainsFunc(specs, func(s string) bool { return strings.Contains(s, area) }) {
			t.Errorf("%s: nothing covers %q", subsetFile, area)
		}
	}
}
