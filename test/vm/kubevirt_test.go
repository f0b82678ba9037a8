// Package vm holds the QEMU guest tests (run.sh, `make vm-test`; see its
// header) and, in Go, the checks of the KubeVirt manifests in
// deploy/kubernetes/kubevirt, which need no cluster: KubeVirt's and CDI's
// API types are not dependencies of this module, so the objects are read as
// plain maps and checked field by field against the APIs they use
// (cdi.kubevirt.io/v1beta1 StorageProfile, kubevirt.io/v1 VirtualMachine)
// and against the driver's StorageClasses and VolumeSnapshotClass in
// deploy/kubernetes/base.
package vm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

const (
	kubevirtDir = "../../deploy/kubernetes/kubevirt"
	baseDir     = "../../deploy/kubernetes/base"
	driverName  = "csi.viperblock.io"
)

type obj = map[string]any

// readObjects decodes every YAML document of the files matching pattern.
func readObjects(t *testing.T, pattern string) map[string][]obj {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s: %v", pattern, err)
	}
	out := map[string][]obj{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var o obj
			if err := utilyaml.Unmarshal(doc, &o); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o != nil {
				out[filepath.Base(f)] = append(out[filepath.Base(f)], o)
			}
		}
	}
	return out
}

// get walks a path of map keys and list indexes.
func get(o any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := o.(obj)
			if !ok {
				return nil
			}
			o = m[k]
		case int:
			l, ok := o.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			o = l[k]
		}
	}
	return o
}

func str(o any, path ...any) string { s, _ := get(o, path...).(string); return s }

// keysIn fails for any key of o[path] outside allowed: a misspelt field
// would be dropped silently by the API server (or rejected, for CRDs with
// strict schemas).
func keysIn(t *testing.T, where string, o any, allowed ...string) {
	t.Helper()
	m, ok := o.(obj)
	if !ok {
		t.Errorf("%s: not an object: %v", where, o)
		return
	}
	for k := range m {
		found := false
		for _, a := range allowed {
			found = found || a == k
		}
		if !found {
			t.Errorf("%s: unknown field %q (known: %v)", where, k, allowed)
		}
	}
}

// driverClasses returns the names of the StorageClasses of our driver and
// the VolumeSnapshotClasses of our driver, from deploy/kubernetes/base.
func driverClasses(t *testing.T) (storage, snapshot map[string]bool) {
	storage, snapshot = map[string]bool{}, map[string]bool{}
	for _, objs := range readObjects(t, filepath.Join(baseDir, "*.yaml")) {
		for _, o := range objs {
			switch str(o, "kind") {
			case "StorageClass":
				if str(o, "provisioner") == driverName {
					storage[str(o, "metadata", "name")] = true
				}
			case "VolumeSnapshotClass":
				if str(o, "driver") == driverName {
					snapshot[str(o, "metadata", "name")] = true
				}
			}
		}
	}
	if len(storage) == 0 || len(snapshot) == 0 {
		t.Fatalf("no StorageClass or VolumeSnapshotClass for %s in %s", driverName, baseDir)
	}
	return storage, snapshot
}

func TestKubeVirtStorageProfile(t *testing.T) {
	storage, snapshot := driverClasses(t)
	objs := readObjects(t, filepath.Join(kubevirtDir, "storageprofile.yaml"))["storageprofile.yaml"]
	if len(objs) == 0 {
		t.Fatal("storageprofile.yaml: no objects")
	}
	rwx := false
	for _, p := range objs {
		if str(p, "apiVersion") != "cdi.kubevirt.io/v1beta1" || str(p, "kind") != "StorageProfile" {
			t.Fatalf("not a cdi.kubevirt.io/v1beta1 StorageProfile: %s %s", str(p, "apiVersion"), str(p, "kind"))
		}
		// CDI matches a StorageProfile to the StorageClass of the same name.
		name := str(p, "metadata", "name")
		if !storage[name] {
			t.Errorf("StorageProfile %q names no StorageClass of %s (have %v)", name, driverName, storage)
		}
		// The fields of CDI's StorageProfileSpec and ClaimPropertySet.
		keysIn(t, name+" spec", get(p, "spec"), "cloneStrategy", "claimPropertySets", "dataImportCronSourceFormat", "snapshotClass")
		keysIn(t, name+" spec.claimPropertySets[0]", get(p, "spec", "claimPropertySets", 0), "accessModes", "volumeMode")
		// Raw block; ReadWriteMany (block only: live migration) or
		// ReadWriteOnce.
		got := get(p, "spec", "claimPropertySets")
		switch {
		case reflect.DeepEqual(got, []any{obj{"accessModes": []any{"ReadWriteMany"}, "volumeMode": "Block"}}):
			rwx = true
		case reflect.DeepEqual(got, []any{obj{"accessModes": []any{"ReadWriteOnce"}, "volumeMode": "Block"}}):
		default:
			t.Errorf("%s: claimPropertySets %v, want one of Block with [ReadWriteMany] or [ReadWriteOnce]", name, got)
		}
		if s := str(p, "spec", "cloneStrategy"); s != "csi-clone" {
			t.Errorf("%s: cloneStrategy %q, want csi-clone", name, s)
		}
		if s := str(p, "spec", "dataImportCronSourceFormat"); s != "snapshot" && s != "pvc" && s != "" {
			t.Errorf("%s: dataImportCronSourceFormat %q", name, s)
		}
		if s := str(p, "spec", "snapshotClass"); s != "" && !snapshot[s] {
			t.Errorf("%s: snapshotClass %q is not a VolumeSnapshotClass of %s (have %v)", name, s, driverName, snapshot)
		}
	}
	if !rwx {
		t.Error("no StorageProfile offers ReadWriteMany block volumes: KubeVirt would not live-migrate VMs")
	}
}

// TestKubeVirtVMs checks the VirtualMachines: each disk has a volume and
// each volume a disk; every PVC and DataVolume template is a raw block
// ReadWriteOnce or ReadWriteMany volume of one of the driver's
// StorageClasses (explicitly, or through the StorageProfile); every PVC a VM
// or a clone source names is defined in these files; a VM with
// evictionStrategy LiveMigrate has only ReadWriteMany disks.
func TestKubeVirtVMs(t *testing.T) {
	storage, _ := driverClasses(t)
	all := readObjects(t, filepath.Join(kubevirtDir, "*.yaml"))
	// The access mode each StorageProfile supplies, by StorageClass.
	profileMode := map[string]string{}
	for _, o := range all["storageprofile.yaml"] {
		if m, ok := get(o, "spec", "claimPropertySets", 0, "accessModes", 0).(string); ok {
			profileMode[str(o, "metadata", "name")] = m
		}
	}
	mode := map[string]string{} // access mode of each PVC and DataVolume template
	type mig struct {
		where, file string
		claims      []string
	}
	var migrating []mig
	claims := map[string]bool{} // PVCs and DataVolume templates, by name
	type ref struct{ file, name string }
	var refs []ref
	vms := 0
	checkClaim := func(where, name string, spec any, viaProfile bool) {
		sc := str(spec, "storageClassName")
		if !storage[sc] {
			t.Errorf("%s: storageClassName %q is not a StorageClass of %s", where, sc, driverName)
		}
		vm, am := str(spec, "volumeMode"), get(spec, "accessModes")
		if viaProfile && vm == "" && am == nil {
			mode[name] = profileMode[sc] // the StorageProfile supplies Block and the access mode
			if mode[name] == "" {
				t.Errorf("%s: no StorageProfile for StorageClass %q supplies the access mode", where, sc)
			}
			return
		}
		if vm != "Block" || !reflect.DeepEqual(am, []any{"ReadWriteOnce"}) && !reflect.DeepEqual(am, []any{"ReadWriteMany"}) {
			t.Errorf("%s: volumeMode %q accessModes %v, want Block [ReadWriteOnce] or [ReadWriteMany]", where, vm, am)
		}
		if l, ok := am.([]any); ok && len(l) == 1 {
			mode[name], _ = l[0].(string)
		}
		if get(spec, "resources", "requests", "storage") == nil {
			t.Errorf("%s: no storage request", where)
		}
	}
	files := make([]string, 0, len(all))
	for f := range all {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		for _, o := range all[f] {
			name := str(o, "metadata", "name")
			where := fmt.Sprintf("%s: %s %s", f, str(o, "kind"), name)
			switch str(o, "apiVersion") + " " + str(o, "kind") {
			case "v1 PersistentVolumeClaim":
				claims[name] = true
				checkClaim(where, name, get(o, "spec"), false)
				// Kubernetes' own types: decode strictly.
				b, _ := json.Marshal(o)
				strict := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
				if _, _, err := strict.Decode(b, nil, nil); err != nil {
					t.Errorf("%s: %v", where, err)
				}
			case "kubevirt.io/v1 VirtualMachine":
				vms++
				keysIn(t, where+" spec", get(o, "spec"), "running", "runStrategy", "dataVolumeTemplates", "template", "instancetype", "preference")
				if get(o, "spec", "running") != nil && get(o, "spec", "runStrategy") != nil {
					t.Errorf("%s: running and runStrategy are exclusive", where)
				}
				tmpls, _ := get(o, "spec", "dataVolumeTemplates").([]any)
				for i, dv := range tmpls {
					dvName := str(dv, "metadata", "name")
					claims[dvName] = true
					w := fmt.Sprintf("%s dataVolumeTemplates[%d] %s", where, i, dvName)
					keysIn(t, w+" spec", get(dv, "spec"), "source", "sourceRef", "storage", "pvc", "contentType", "preallocation", "priorityClassName", "checkpoints", "finalCheckpoint")
					if s := get(dv, "spec", "storage"); s != nil {
						checkClaim(w, dvName, s, true)
					} else {
						checkClaim(w, dvName, get(dv, "spec", "pvc"), false)
					}
					if src := get(dv, "spec", "source", "pvc"); src != nil {
						refs = append(refs, ref{f, str(src, "name")})
					}
				}
				spec := get(o, "spec", "template", "spec")
				disks := map[string]bool{}
				for _, d := range asList(get(spec, "domain", "devices", "disks")) {
					keysIn(t, where+" disk "+str(d, "name"), d, "name", "disk", "cdrom", "lun", "bootOrder", "serial", "dedicatedIOThread", "cache", "io", "tag", "blockSize", "shareable", "errorPolicy")
					if c := str(d, "cache"); c != "" && c != "none" && c != "writethrough" && c != "writeback" {
						t.Errorf("%s: disk %s: cache %q", where, str(d, "name"), c)
					}
					disks[str(d, "name")] = true
				}
				vols := map[string]bool{}
				var vmClaims []string
				for _, v := range asList(get(spec, "volumes")) {
					for _, n := range []string{str(v, "dataVolume", "name"), str(v, "persistentVolumeClaim", "claimName")} {
						if n != "" {
							vmClaims = append(vmClaims, n)
						}
					}
					vn := str(v, "name")
					vols[vn] = true
					if !disks[vn] {
						t.Errorf("%s: volume %s has no disk", where, vn)
					}
					if n := str(v, "dataVolume", "name"); n != "" {
						refs = append(refs, ref{f, n})
					}
					if n := str(v, "persistentVolumeClaim", "claimName"); n != "" {
						refs = append(refs, ref{f, n})
					}
				}
				for d := range disks {
					if !vols[d] {
						t.Errorf("%s: disk %s has no volume", where, d)
					}
				}
				if s := str(spec, "evictionStrategy"); s == "LiveMigrate" {
					migrating = append(migrating, mig{where, f, vmClaims})
				}
			case "cdi.kubevirt.io/v1beta1 StorageProfile":
			default:
				t.Errorf("%s: unexpected object %s %s", f, str(o, "apiVersion"), str(o, "kind"))
			}
		}
	}
	if vms == 0 {
		t.Fatal("no VirtualMachine in " + kubevirtDir)
	}
	// KubeVirt live-migrates a VM only if every disk is ReadWriteMany.
	for _, m := range migrating {
		for _, c := range m.claims {
			if mode[c] != "ReadWriteMany" {
				t.Errorf("%s: evictionStrategy LiveMigrate, but its disk %q is %q, not ReadWriteMany", m.where, c, mode[c])
			}
		}
	}
	for _, r := range refs {
		if !claims[r.name] {
			t.Errorf("%s: refers to PVC or DataVolume %q, defined in no file here", r.file, r.name)
		}
	}
}

func asList(o any) []any { l, _ := o.([]any); return l }
