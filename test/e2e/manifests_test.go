package e2e

// The deploy/kubernetes manifests, checked without a cluster: every
// kustomization (base and overlays) renders with kustomize's own library,
// every object it renders and every example decodes with client-go's scheme
// (plus the snapshot API) in strict mode, so an unknown or misspelt field
// fails; then the objects are checked against each other (references, RBAC,
// ports, $(VARS), image pins) and against the e2e harness's pinned sidecar
// versions.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

const (
	driverName = "csi.viperblock.io"
	namespace  = "viperblock-system"
	deployDir  = "../../deploy/kubernetes"
)

// sidecarModules maps each sidecar image to the Go module the e2e harness
// builds it from (test/e2e/k8sbuild/go.mod): the versions must agree, so
// the e2e tests what the manifests deploy. node-driver-registrar and
// livenessprobe are not on the module proxy (the harness has its own
// registrar), so they are only checked for a pinned tag.
var sidecarModules = map[string]string{
	"registry.k8s.io/sig-storage/csi-provisioner": "github.com/kubernetes-csi/external-provisioner/v6",
	"registry.k8s.io/sig-storage/csi-attacher":    "github.com/kubernetes-csi/external-attacher/v4",
	"registry.k8s.io/sig-storage/csi-snapshotter": "github.com/kubernetes-csi/external-snapshotter/v8",
	"registry.k8s.io/sig-storage/csi-resizer":     "github.com/kubernetes-csi/external-resizer/v2",
}

// strictDecoder decodes YAML or JSON into typed objects and fails on
// unknown and duplicate fields.
func strictDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	s := runtime.NewScheme()
	if err := scheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := snapshotv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}

// splitYAML returns the non-empty documents of a multi-document stream.
func splitYAML(t *testing.T, data []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
}

func stripComments(doc []byte) []byte {
	var out bytes.Buffer
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out.Write(l)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

// objects is one rendering, decoded.
type objects struct {
	all []runtime.Object
}

func decodeAll(t *testing.T, name string, data []byte) objects {
	t.Helper()
	dec := strictDecoder(t)
	var o objects
	for i, doc := range splitYAML(t, data) {
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Errorf("%s: document %d: %v\n%s", name, i, err, firstLines(doc, 6))
			continue
		}
		if gvk.Kind == "" || gvk.Version == "" {
			t.Errorf("%s: document %d has no apiVersion/kind", name, i)
		}
		o.all = append(o.all, obj)
	}
	return o
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitN(string(b), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// render runs kustomize on dir, as `kubectl apply -k dir` would.
func render(t *testing.T, dir string) []byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	y, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func kustomizations(t *testing.T) []string {
	t.Helper()
	dirs := []string{filepath.Join(deployDir, "base")}
	overlays, err := filepath.Glob(filepath.Join(deployDir, "overlays", "*", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(overlays) == 0 {
		t.Fatal("no overlays under deploy/kubernetes/overlays")
	}
	for _, k := range overlays {
		dirs = append(dirs, filepath.Dir(k))
	}
	return dirs
}

// TestManifests renders the base and every overlay and checks each result.
func TestManifests(t *testing.T) {
	for _, dir := range kustomizations(t) {
		name, _ := filepath.Rel(deployDir, dir)
		t.Run(name, func(t *testing.T) {
			o := decodeAll(t, name, render(t, dir))
			if t.Failed() {
				return
			}
			checkObjects(t, o)
		})
	}
}

// TestExamples decodes every example manifest strictly and checks that it
// names only classes the base or the example itself defines.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(deployDir, "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	base := decodeAll(t, "base", render(t, filepath.Join(deployDir, "base")))
	classes := map[string]bool{}
	for _, sc := range all[*storagev1.StorageClass](base) {
		classes[sc.Name] = true
	}
	snapClasses := map[string]bool{}
	for _, c := range all[*snapshotv1.VolumeSnapshotClass](base) {
		snapClasses[c.Name] = true
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		o := decodeAll(t, filepath.Base(f), data)
		// An example may define a class of its own, for the driver.
		own := map[string]bool{}
		for _, sc := range all[*storagev1.StorageClass](o) {
			if sc.Provisioner != "csi.viperblock.io" {
				t.Errorf("%s: StorageClass %s has provisioner %q", f, sc.Name, sc.Provisioner)
			}
			own[sc.Name] = true
		}
		for _, pvc := range all[*corev1.PersistentVolumeClaim](o) {
			if sc := pvc.Spec.StorageClassName; sc == nil || !classes[*sc] && !own[*sc] {
				t.Errorf("%s: PVC %s uses storage class %v, not one of the base's or the example's", f, pvc.Name, deref(sc))
			}
		}
		for _, vs := range all[*snapshotv1.VolumeSnapshot](o) {
			if c := vs.Spec.VolumeSnapshotClassName; c == nil || !snapClasses[*c] {
				t.Errorf("%s: VolumeSnapshot %s uses class %v, not the base's", f, vs.Name, c)
			}
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return "(none)"
	}
	return *s
}

func all[T runtime.Object](o objects) []T {
	var out []T
	for _, obj := range o.all {
		if v, ok := obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func one[T runtime.Object](t *testing.T, o objects, what string) T {
	t.Helper()
	v := all[T](o)
	if len(v) != 1 {
		t.Fatalf("want exactly one %s, have %d", what, len(v))
	}
	return v[0]
}

// TestDockerfile checks that the image has what the manifests run: the
// controller and node commands, and the plugin at the node's default
// --plugin path.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	o := decodeAll(t, "base", render(t, filepath.Join(deployDir, "base")))
	dep := one[*appsv1.Deployment](t, o, "Deployment")
	ds := one[*appsv1.DaemonSet](t, o, "DaemonSet")
	cmds := append(container(t, &dep.Spec.Template.Spec, "controller").Command, container(t, &ds.Spec.Template.Spec, "node").Command...)
	if len(cmds) != 2 {
		t.Fatalf("controller and node containers need a command each, have %q", cmds)
	}
	copied := map[string]bool{}
	for _, line := range strings.Split(string(df), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "COPY" {
			continue
		}
		dst := f[len(f)-1]
		for _, src := range f[1 : len(f)-1] {
			if strings.HasPrefix(src, "--") {
				continue
			}
			if strings.HasSuffix(dst, "/") {
				copied[dst+filepath.Base(src)] = true
			} else {
				copied[dst] = true
			}
		}
	}
	for _, want := range append(cmds, "/usr/local/bin/vblock", "/usr/lib/viperblock/nbdkit-viperblock-plugin.so") {
		if !copied[want] {
			t.Errorf("the Dockerfile does not put %s in the image", want)
		}
	}
	if !regexp.MustCompile(`(?m)^RUN make build( (VERSION|COMMIT|BUILD_DATE)="\$(VERSION|COMMIT|BUILD_DATE)")*$`).Match(df) {
		t.Error("the Dockerfile's build stage must run the project's `make build`")
	}
}

// TestImageRecipe keeps the e2e harness's image recipe (image.sh, which
// builds the driver's image without a container engine) in step with the
// Dockerfile: its plan, read by shell from the Dockerfile, must be what
// this independent reading of the Dockerfile's final stage finds.
func TestImageRecipe(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.ReplaceAll(string(df), "\\\n", "")
	var stage []string
	for _, l := range strings.Split(joined, "\n") {
		if strings.HasPrefix(l, "FROM ") {
			stage = nil
		}
		stage = append(stage, l)
	}
	var want []string
	for _, l := range stage {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "FROM":
			want = append(want, "base "+f[1])
		case f[0] == "RUN" && strings.Contains(l, "apt-get install"):
			_, rest, _ := strings.Cut(l, "apt-get install")
			rest, _, _ = strings.Cut(rest, "&&")
			var pkgs []string
			for _, p := range strings.Fields(rest) {
				if !strings.HasPrefix(p, "-") {
					pkgs = append(pkgs, p)
				}
			}
			sort.Strings(pkgs)
			want = append(want, "packages "+strings.Join(pkgs, " "))
		case f[0] == "COPY" && len(f) > 3 && f[1] == "--from=build":
			dst := f[len(f)-1]
			for _, src := range f[2 : len(f)-1] {
				d := dst
				if strings.HasSuffix(dst, "/") {
					d = dst + filepath.Base(src)
				}
				want = append(want, "copy "+strings.TrimPrefix(src, "/src/")+" "+d)
			}
		case f[0] == "ENV":
			want = append(want, "env "+strings.TrimSpace(strings.TrimPrefix(l, "ENV")))
		case f[0] == "CMD":
			want = append(want, "cmd "+strings.TrimSpace(strings.TrimPrefix(l, "CMD")))
		}
	}
	out, err := exec.Command("bash", "image.sh", "plan").CombinedOutput()
	if err != nil {
		t.Fatalf("image.sh plan: %v\n%s", err, out)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		got = append(got, strings.TrimSpace(l))
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("image.sh reads the Dockerfile as\n  %s\nbut its final stage is\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	for _, l := range want {
		if f := strings.Fields(l); f[0] == "copy" && !strings.HasPrefix(f[1], "bin/") && !strings.HasPrefix(f[1], "lib/") {
			t.Errorf("the Dockerfile copies %s, which make build does not make", f[1])
		}
	}
}

func checkObjects(t *testing.T, o objects) {
	checkNamespaces(t, o)
	checkCSIDriver(t, o)
	checkClasses(t, o)
	dep := one[*appsv1.Deployment](t, o, "Deployment")
	ds := one[*appsv1.DaemonSet](t, o, "DaemonSet")
	checkPod(t, o, "Deployment "+dep.Name, &dep.Spec.Template.Spec)
	checkPod(t, o, "DaemonSet "+ds.Name, &ds.Spec.Template.Spec)
	checkController(t, dep)
	checkNode(t, ds)
	checkRBAC(t, o, dep, ds)
}

func checkNamespaces(t *testing.T, o objects) {
	var nsFound bool
	for _, ns := range all[*corev1.Namespace](o) {
		if ns.Name != namespace {
			continue
		}
		nsFound = true
		// The node plugin is privileged with hostPID and hostNetwork:
		// Pod Security admission must let it in.
		if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
			t.Errorf("Namespace %s: label pod-security.kubernetes.io/enforce=privileged missing", namespace)
		}
	}
	if !nsFound {
		t.Errorf("no Namespace %s", namespace)
	}
	for _, obj := range o.all {
		m, ok := obj.(interface {
			GetNamespace() string
			GetName() string
		})
		if !ok {
			continue
		}
		namespaced := true
		switch obj.(type) {
		case *corev1.Namespace, *storagev1.CSIDriver, *storagev1.StorageClass, *snapshotv1.VolumeSnapshotClass,
			*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
			namespaced = false
		}
		if namespaced && m.GetNamespace() != namespace {
			t.Errorf("%T %s is in namespace %q, want %s", obj, m.GetName(), m.GetNamespace(), namespace)
		}
		if !namespaced && m.GetNamespace() != "" {
			t.Errorf("cluster-scoped %T %s has namespace %q", obj, m.GetName(), m.GetNamespace())
		}
	}
}

func checkCSIDriver(t *testing.T, o objects) {
	d := one[*storagev1.CSIDriver](t, o, "CSIDriver")
	if d.Name != driverName {
		t.Errorf("CSIDriver name %q, want %q", d.Name, driverName)
	}
	if d.Spec.AttachRequired == nil || !*d.Spec.AttachRequired {
		t.Error("CSIDriver: attachRequired must be true (ControllerPublish records the owner node)")
	}
	if d.Spec.FSGroupPolicy == nil || *d.Spec.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("CSIDriver: fsGroupPolicy %v, want File", d.Spec.FSGroupPolicy)
	}
	if !slices.Equal(d.Spec.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
		t.Errorf("CSIDriver: volumeLifecycleModes %v, want [Persistent]", d.Spec.VolumeLifecycleModes)
	}
}

func checkClasses(t *testing.T, o objects) {
	fs := map[string]bool{}
	scs := all[*storagev1.StorageClass](o)
	if len(scs) == 0 {
		t.Fatal("no StorageClass")
	}
	for _, sc := range scs {
		if sc.Provisioner != driverName {
			t.Errorf("StorageClass %s: provisioner %q", sc.Name, sc.Provisioner)
		}
		if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("StorageClass %s: allowVolumeExpansion must be true", sc.Name)
		}
		fs[sc.Parameters["csi.storage.k8s.io/fstype"]] = true
		for k := range sc.Parameters {
			if !strings.HasPrefix(k, "csi.storage.k8s.io/") && !slices.Contains([]string{"store", "fsType", "mkfsOptions", "cache", "drainInterval", "durability", "leaseDuration"}, k) {
				t.Errorf("StorageClass %s: parameter %q is not one the driver knows", sc.Name, k)
			}
		}
	}
	for _, want := range []string{"ext4", "xfs", ""} {
		if !fs[want] {
			t.Errorf("no StorageClass with fstype %q (ext4, xfs, and one without for raw block)", want)
		}
	}
	vsc := one[*snapshotv1.VolumeSnapshotClass](t, o, "VolumeSnapshotClass")
	if vsc.Driver != driverName {
		t.Errorf("VolumeSnapshotClass driver %q", vsc.Driver)
	}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkPod checks what Kubernetes only finds out at run time: $(VARS) with
// no definition, ports flags bind that the container does not declare,
// probes naming no port, references to missing ConfigMaps, Secrets,
// volumes and ServiceAccounts, and unpinned images.
func checkPod(t *testing.T, o objects, where string, spec *corev1.PodSpec) {
	configMaps := map[string]map[string]string{}
	for _, cm := range all[*corev1.ConfigMap](o) {
		configMaps[cm.Name] = cm.Data
	}
	secrets := map[string]bool{}
	for _, s := range all[*corev1.Secret](o) {
		secrets[s.Name] = true
	}
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
		if v.Secret != nil && !secrets[v.Secret.SecretName] && (v.Secret.Optional == nil || !*v.Secret.Optional) {
			t.Errorf("%s: volume %s needs Secret %q, which is not defined and not optional", where, v.Name, v.Secret.SecretName)
		}
	}
	if !slices.ContainsFunc(all[*corev1.ServiceAccount](o), func(sa *corev1.ServiceAccount) bool { return sa.Name == spec.ServiceAccountName }) {
		t.Errorf("%s: ServiceAccount %q is not defined", where, spec.ServiceAccountName)
	}
	podPorts := map[int32]string{}
	for _, c := range spec.Containers {
		where := where + " container " + c.Name
		defined := map[string]bool{}
		for _, ef := range c.EnvFrom {
			if ef.ConfigMapRef == nil {
				continue
			}
			data, ok := configMaps[ef.ConfigMapRef.Name]
			if !ok {
				t.Errorf("%s: envFrom ConfigMap %q is not defined", where, ef.ConfigMapRef.Name)
			}
			for k := range data {
				defined[k] = true
			}
		}
		for _, e := range c.Env {
			defined[e.Name] = true
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil && !secrets[r.Name] && (r.Optional == nil || !*r.Optional) {
				t.Errorf("%s: env %s needs Secret %q, which is not defined and not optional", where, e.Name, r.Name)
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
				if _, ok := configMaps[r.Name][r.Key]; !ok {
					t.Errorf("%s: env %s needs ConfigMap %s key %s", where, e.Name, r.Name, r.Key)
				}
			}
		}
		for _, a := range append(slices.Clone(c.Command), c.Args...) {
			for _, m := range varRef.FindAllStringSubmatch(a, -1) {
				if !defined[m[1]] {
					t.Errorf("%s: arg %q refers to $(%s), which the container does not define", where, a, m[1])
				}
			}
		}

		names := map[string]int32{}
		for _, p := range c.Ports {
			if other, dup := podPorts[p.ContainerPort]; dup {
				t.Errorf("%s: port %d is also declared by %s", where, p.ContainerPort, other)
			}
			podPorts[p.ContainerPort] = c.Name
			names[p.Name] = p.ContainerPort
		}
		// Ports are the pod's: the livenessprobe sidecar serves the port
		// that the driver container declares as its probe's.
		for _, a := range c.Args {
			if port, ok := listenPort(a); ok && !podPortsHave(spec, port) {
				t.Errorf("%s: %q listens on %d, which no container of the pod declares", where, a, port)
			}
		}
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if p == nil || p.HTTPGet == nil {
				continue
			}
			port := p.HTTPGet.Port
			if port.StrVal != "" {
				if _, ok := names[port.StrVal]; !ok {
					t.Errorf("%s: probe port %q is not a named port of the container", where, port.StrVal)
				}
			} else if !podPortsHave(spec, int32(port.IntValue())) {
				t.Errorf("%s: probe port %d is not declared", where, port.IntValue())
			}
		}
		for _, vm := range c.VolumeMounts {
			if !volumes[vm.Name] {
				t.Errorf("%s: volumeMount %s has no volume", where, vm.Name)
			}
		}
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: needs a memory request and a memory limit", where)
		} else if c.Resources.Limits.Memory().Cmp(*c.Resources.Requests.Memory()) < 0 {
			t.Errorf("%s: memory limit below its request", where)
		}

		image, tag, ok := strings.Cut(c.Image, ":")
		if !ok || tag == "" || tag == "latest" || strings.Contains(tag, "/") {
			t.Errorf("%s: image %q is not pinned to a version", where, c.Image)
		}
		if strings.Contains(image, "sig-storage") && !strings.HasPrefix(image, "registry.k8s.io/sig-storage/") {
			t.Errorf("%s: image %q: sidecars come from registry.k8s.io/sig-storage", where, c.Image)
		}
	}
}

func podPortsHave(spec *corev1.PodSpec, port int32) bool {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.ContainerPort == port {
				return true
			}
		}
	}
	return false
}

// listenPort finds the port of flags that bind one: --http-endpoint=:8080,
// --metrics-bind-address=:8080, --health-port=9808.
func listenPort(arg string) (int32, bool) {
	flag, val, ok := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	if !ok {
		return 0, false
	}
	switch {
	case flag == "health-port":
	case strings.HasSuffix(flag, "-endpoint") || strings.HasSuffix(flag, "-address"):
		if strings.Contains(val, "/") {
			return 0, false // a socket
		}
		_, p, ok := strings.Cut(val, ":")
		if !ok {
			return 0, false
		}
		val = p
	default:
		return 0, false
	}
	var n int32
	if _, err := fmt.Sscanf(val, "%d", &n); err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func hasArgs(t *testing.T, c *corev1.Container, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(c.Args, w) {
			t.Errorf("container %s: missing arg %q (has %q)", c.Name, w, c.Args)
		}
	}
}

func argPrefix(c *corev1.Container, prefix string) (string, bool) {
	for _, a := range c.Args {
		if strings.HasPrefix(a, prefix) {
			return strings.TrimPrefix(a, prefix), true
		}
	}
	return "", false
}

// wantImages are the image pins of the issue; sidecarVersions cross-checks
// the four built by the e2e harness.
var wantImages = map[string]string{
	"csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v6.4.0",
	"csi-attacher":    "registry.k8s.io/sig-storage/csi-attacher:v4.13.0",
	"csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8.7.0",
	"csi-resizer":     "registry.k8s.io/sig-storage/csi-resizer:v2.3.0",
}

func checkController(t *testing.T, dep *appsv1.Deployment) {
	spec := &dep.Spec.Template.Spec
	ctl := container(t, spec, "controller")
	if !strings.Contains(ctl.Image, "viperblock-csi") {
		t.Errorf("controller image %q", ctl.Image)
	}
	hasArgs(t, ctl, "--endpoint=unix:///csi/csi.sock")
	if s, ok := argPrefix(ctl, "--store=default="); !ok || s == "" {
		t.Errorf("controller: no --store=default=URL in %q", ctl.Args)
	}
	for name, image := range wantImages {
		c := container(t, spec, name)
		if c.Image != image {
			t.Errorf("%s image %q, want %q", name, c.Image, image)
		}
		hasArgs(t, c, "--csi-address=/csi/csi.sock", "--leader-election")
	}
	hasArgs(t, container(t, spec, "csi-provisioner"), "--extra-create-metadata", "--default-fstype=ext4")
	lp := container(t, spec, "liveness-probe")
	if !strings.HasPrefix(lp.Image, "registry.k8s.io/sig-storage/livenessprobe:v") {
		t.Errorf("liveness-probe image %q", lp.Image)
	}
	sidecarVersions(t, spec)
}

// sidecarVersions checks the sidecar images against the module versions
// the e2e harness builds.
func sidecarVersions(t *testing.T, spec *corev1.PodSpec) {
	gomod, err := os.ReadFile("k8sbuild/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range spec.Containers {
		image, tag, _ := strings.Cut(c.Image, ":")
		mod, ok := sidecarModules[image]
		if !ok {
			continue
		}
		re := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(mod) + `\s+(v\S+)`)
		m := re.FindSubmatch(gomod)
		if m == nil {
			t.Errorf("k8sbuild/go.mod does not require %s (image %s)", mod, c.Image)
			continue
		}
		if string(m[1]) != tag {
			t.Errorf("image %s is %s but the e2e harness builds %s %s", image, tag, mod, m[1])
		}
	}
}

func checkNode(t *testing.T, ds *appsv1.DaemonSet) {
	spec := &ds.Spec.Template.Spec
	node := container(t, spec, "node")
	if node.SecurityContext == nil || node.SecurityContext.Privileged == nil || !*node.SecurityContext.Privileged {
		t.Error("node container must be privileged")
	}
	// Volume servers outlive the container: they are outside its PID
	// namespace, its network namespace and its cgroup.
	if !spec.HostPID || !spec.HostNetwork {
		t.Error("node: hostPID and hostNetwork are needed for volume servers to outlive the node plugin's container")
	}
	if spec.HostNetwork && spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("node: dnsPolicy %q with hostNetwork, want ClusterFirstWithHostNet", spec.DNSPolicy)
	}
	if spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken {
		t.Error("node: the node plugin posts volume health Events: automountServiceAccountToken must be true")
	}
	if mustArg(t, node, "--server-cgroup=") == "" {
		t.Error("node: --server-cgroup is empty")
	}
	cgRoot := mustArg(t, node, "--cgroup-root=")
	var cgMounted bool
	for _, m := range node.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == "/sys/fs/cgroup" && m.MountPath == cgRoot && !m.ReadOnly {
				cgMounted = true
			}
		}
	}
	if !cgMounted {
		t.Errorf("node: --cgroup-root=%s is not the host's /sys/fs/cgroup mounted read-write", cgRoot)
	}
	hasArgs(t, node, "--endpoint=unix:///csi/csi.sock", "--node-id=$(NODE_NAME)", "--wal-dir=/var/lib/viperblock/wal")
	var nodeNameFromSpec bool
	for _, e := range node.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeNameFromSpec = true
		}
	}
	if !nodeNameFromSpec {
		t.Error("node: NODE_NAME must come from spec.nodeName")
	}

	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range node.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for path, prop := range map[string]corev1.MountPropagationMode{
		"/var/lib/kubelet":        corev1.MountPropagationBidirectional,
		"/dev":                    "",
		"/var/lib/viperblock/wal": "",
		"/run/viperblock":         corev1.MountPropagationBidirectional,
	} {
		m, ok := mounts[path]
		if !ok {
			t.Errorf("node: nothing mounted at %s", path)
			continue
		}
		if hostPaths[m.Name] == "" {
			t.Errorf("node: %s is not a hostPath volume", path)
		}
		if prop != "" && (m.MountPropagation == nil || *m.MountPropagation != prop) {
			t.Errorf("node: %s needs mountPropagation %s", path, prop)
		}
	}
	// Every directory the node plugin is told about must be on the host:
	// state in the container's own filesystem dies with the container.
	// Secrets it only reads are the exception.
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			hostPaths[v.Name] = "secret:" + v.Secret.SecretName
		}
	}
	for _, a := range node.Args {
		_, val, ok := strings.Cut(a, "=")
		val = strings.TrimPrefix(val, "unix://")
		if !ok || !strings.HasPrefix(val, "/") {
			continue
		}
		onHost := false
		for mp, m := range mounts {
			if (val == mp || strings.HasPrefix(val, mp+"/")) && hostPaths[m.Name] != "" {
				onHost = true
			}
		}
		if !onHost {
			t.Errorf("node: %s is not under a hostPath mount", a)
		}
	}

	// The registrar must tell the kubelet the host path of the socket the
	// node plugin listens on.
	reg := container(t, spec, "node-driver-registrar")
	if !strings.HasPrefix(reg.Image, "registry.k8s.io/sig-storage/csi-node-driver-registrar:v") {
		t.Errorf("node-driver-registrar image %q", reg.Image)
	}
	kubeletPath, _ := argPrefix(reg, "--kubelet-registration-path=")
	sock := strings.TrimPrefix(strings.TrimPrefix(mustArg(t, node, "--endpoint="), "unix://"), "/csi/")
	if want := hostPaths["plugin-dir"] + "/" + sock; kubeletPath != want {
		t.Errorf("registrar --kubelet-registration-path=%s, but the node plugin's socket is %s on the host", kubeletPath, want)
	}
	if want := "/var/lib/kubelet/plugins/" + driverName; hostPaths["plugin-dir"] != want {
		t.Errorf("plugin-dir is %s, want %s", hostPaths["plugin-dir"], want)
	}
	if hostPaths["registration-dir"] != "/var/lib/kubelet/plugins_registry" {
		t.Errorf("registration-dir is %s", hostPaths["registration-dir"])
	}
	container(t, spec, "liveness-probe")
}

func mustArg(t *testing.T, c *corev1.Container, prefix string) string {
	t.Helper()
	v, ok := argPrefix(c, prefix)
	if !ok {
		t.Fatalf("container %s: no %s arg", c.Name, prefix)
	}
	return v
}

// rbacRule is one permission: verb on group/resource, in a namespace ("":
// cluster-wide).
type rbacRule struct {
	group, resource, verb, ns string
}

// checkRBAC evaluates what each ServiceAccount may do, through its
// bindings, and checks the permissions each component is known to need.
func checkRBAC(t *testing.T, o objects, dep *appsv1.Deployment, ds *appsv1.DaemonSet) {
	clusterRoles := map[string][]rbacv1.PolicyRule{}
	for _, r := range all[*rbacv1.ClusterRole](o) {
		clusterRoles[r.Name] = r.Rules
	}
	roles := map[string][]rbacv1.PolicyRule{}
	for _, r := range all[*rbacv1.Role](o) {
		roles[r.Namespace+"/"+r.Name] = r.Rules
	}
	sas := map[string]bool{}
	for _, sa := range all[*corev1.ServiceAccount](o) {
		sas[sa.Namespace+"/"+sa.Name] = true
	}
	granted := map[string][]func(rbacRule) bool{} // SA -> grants
	bind := func(kind, where string, subjects []rbacv1.Subject, ref rbacv1.RoleRef, ns string) {
		var rules []rbacv1.PolicyRule
		var ok bool
		switch ref.Kind {
		case "ClusterRole":
			rules, ok = clusterRoles[ref.Name]
		case "Role":
			rules, ok = roles[ns+"/"+ref.Name]
		}
		if !ok {
			t.Errorf("%s %s refers to %s %s, which is not defined", kind, where, ref.Kind, ref.Name)
			return
		}
		for _, s := range subjects {
			if s.Kind != "ServiceAccount" {
				continue
			}
			sns := s.Namespace
			if sns == "" {
				sns = ns
			}
			key := sns + "/" + s.Name
			if !sas[key] {
				t.Errorf("%s %s binds ServiceAccount %s, which is not defined", kind, where, key)
			}
			granted[key] = append(granted[key], func(r rbacRule) bool {
				if ns != "" && r.ns != ns {
					return false
				}
				return rulesAllow(rules, r)
			})
		}
	}
	for _, b := range all[*rbacv1.ClusterRoleBinding](o) {
		bind("ClusterRoleBinding", b.Name, b.Subjects, b.RoleRef, "")
	}
	for _, b := range all[*rbacv1.RoleBinding](o) {
		bind("RoleBinding", b.Namespace+"/"+b.Name, b.Subjects, b.RoleRef, b.Namespace)
	}
	can := func(sa string, r rbacRule) bool {
		for _, g := range granted[sa] {
			if g(r) {
				return true
			}
		}
		return false
	}

	ctl := dep.Namespace + "/" + dep.Spec.Template.Spec.ServiceAccountName
	need := map[string][]rbacRule{
		"provisioner": {
			{"", "persistentvolumes", "create", ""}, {"", "persistentvolumes", "delete", ""},
			{"", "persistentvolumeclaims", "update", ""}, {"storage.k8s.io", "storageclasses", "watch", ""},
			{"snapshot.storage.k8s.io", "volumesnapshotcontents", "get", ""}, {"", "events", "create", ""},
		},
		"attacher": {
			{"storage.k8s.io", "volumeattachments", "patch", ""}, {"storage.k8s.io", "volumeattachments/status", "patch", ""},
			{"", "persistentvolumes", "patch", ""},
		},
		"snapshotter": {
			{"snapshot.storage.k8s.io", "volumesnapshotcontents", "update", ""},
			{"snapshot.storage.k8s.io", "volumesnapshotcontents/status", "patch", ""},
			{"snapshot.storage.k8s.io", "volumesnapshotclasses", "list", ""},
		},
		"resizer": {
			{"", "persistentvolumeclaims/status", "patch", ""}, {"", "persistentvolumes", "patch", ""},
			{"", "pods", "list", ""},
		},
		"controller (node check)": {
			{"storage.k8s.io", "csinodes", "get", ""}, {"storage.k8s.io", "csinodes", "list", ""},
		},
		"leader election": {
			{"coordination.k8s.io", "leases", "create", dep.Namespace}, {"coordination.k8s.io", "leases", "update", dep.Namespace},
		},
	}
	var comps []string
	for c := range need {
		comps = append(comps, c)
	}
	sort.Strings(comps)
	for _, comp := range comps {
		for _, r := range need[comp] {
			if !can(ctl, r) {
				t.Errorf("%s: ServiceAccount %s may not %s %s/%s%s", comp, ctl, r.verb, r.group, r.resource, inNS(r.ns))
			}
		}
	}
	// The node plugin reads PersistentVolumes and posts Events on claims
	// (volume health), and may do nothing else.
	nodeSA := ds.Namespace + "/" + ds.Spec.Template.Spec.ServiceAccountName
	for _, r := range []rbacRule{{"", "persistentvolumes", "get", ""}, {"", "persistentvolumes", "list", ""},
		{"", "events", "create", "app"}, {"", "events", "patch", "app"}} {
		if !can(nodeSA, r) {
			t.Errorf("node: ServiceAccount %s may not %s %s%s (volume health events)", nodeSA, r.verb, r.resource, inNS(r.ns))
		}
	}
	for _, r := range []rbacRule{{"", "persistentvolumes", "update", ""}, {"", "persistentvolumes", "delete", ""},
		{"", "persistentvolumeclaims", "update", ""}, {"", "secrets", "get", ""}, {"", "pods", "list", ""},
		{"", "events", "delete", "app"}, {"", "nodes", "patch", ""}} {
		if can(nodeSA, r) {
			t.Errorf("node: ServiceAccount %s may %s %s%s, which the node plugin never needs", nodeSA, r.verb, r.resource, inNS(r.ns))
		}
	}
}

func inNS(ns string) string {
	if ns == "" {
		return ""
	}
	return " in " + ns
}

func rulesAllow(rules []rbacv1.PolicyRule, r rbacRule) bool {
	match := func(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }
	for _, pr := range rules {
		if match(pr.APIGroups, r.group) && match(pr.Resources, r.resource) && match(pr.Verbs, r.verb) {
			return true
		}
	}
	return false
}

// TestStrictDecodingCatchesTypos keeps the test honest: a misspelt field
// must fail to decode.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	dec := strictDecoder(t)
	for _, doc := range []string{
		"apiVersion: storage.k8s.io/v1\nkind: CSIDriver\nmetadata: {name: x}\nspec: {attachRequire: true}\n",
		"apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: x}\ndriver: d\ndeletionPolicy: Delete\nparameter: {}\n",
	} {
		if _, _, err := dec.Decode([]byte(doc), nil, nil); !runtime.IsStrictDecodingError(err) {
			t.Errorf("strict decoding accepted a misspelt field (err=%v):\n%s", err, doc)
		}
	}
	if _, gvk, err := dec.Decode([]byte("apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: x}\ndriver: d\ndeletionPolicy: Delete\n"), nil, nil); err != nil ||
		*gvk != (schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshotClass"}) {
		t.Errorf("VolumeSnapshotClass does not decode: %v %v", gvk, err)
	}
}
