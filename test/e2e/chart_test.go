package e2e

// The Helm chart (deploy/helm/viperblock-csi), checked with the helm binary
// that scripts/deps.sh installs: helm lint, helm template with the default
// values and with others, every rendering through the same checks as the
// kustomize renderings (checkObjects), and the chart against kustomize: the
// chart's defaults must render the workload objects of deploy/kubernetes/base,
// and its ci/*-values.yaml files those of the overlay of the same name, up
// to the fields that legitimately differ (Helm's labels, the config
// checksum, kustomize's ConfigMap name suffix). Every difference is named.

import (
	"bytes"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/units"
)

const chartDir = "../../deploy/helm/viperblock-csi"

// tool returns the path of a command that scripts/deps.sh installs into
// $(go env GOPATH)/bin: on PATH or there. Missing, the test is skipped, or
// fails under VB_REQUIRE (the capability is the command's name).
func tool(t *testing.T, name string) string {
	t.Helper()
	if p := findTool(name); p != "" {
		return p
	}
	testutil.Skip(t, name, "%s is not installed (`make deps` installs it)", name)
	return ""
}

// findTool returns the path of the command, or "" when it is not installed.
func findTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		gopath = build.Default.GOPATH
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// runTool runs a command and fails the test, with its output, unless it
// succeeds.
func runTool(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	out, err := runToolErr(bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	return out
}

func runToolErr(bin string, args ...string) ([]byte, error) {
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return append(stdout.Bytes(), stderr.Bytes()...), err
	}
	return stdout.Bytes(), nil
}

// helmTemplate renders the chart as `helm install -n viperblock-system`
// would, on a cluster with the snapshot API unless noSnapshotAPI.
func helmTemplate(t *testing.T, noSnapshotAPI bool, args ...string) []byte {
	t.Helper()
	helm := tool(t, "helm")
	a := []string{"template", "viperblock-csi", chartDir, "--namespace", namespace}
	if !noSnapshotAPI {
		a = append(a, "--api-versions", "snapshot.storage.k8s.io/v1")
	}
	return runTool(t, helm, append(a, args...)...)
}

// chartCases are the chart's value files (ci/) and the kustomization each
// must render the same as; "" is the chart's defaults.
var chartCases = []struct{ values, kustomization string }{
	{"", "base"},
	{"ci/production-values.yaml", "overlays/production"},
	{"ci/dev-values.yaml", "overlays/dev"},
}

func valuesArgs(values string) []string {
	if values == "" {
		return nil
	}
	return []string{"-f", filepath.Join(chartDir, values)}
}

func TestHelmLint(t *testing.T) {
	helm := tool(t, "helm")
	for _, c := range chartCases {
		args := append([]string{"lint", "--strict", chartDir}, valuesArgs(c.values)...)
		out := runTool(t, helm, args...)
		if !bytes.Contains(out, []byte("0 chart(s) failed")) {
			t.Errorf("helm %s:\n%s", strings.Join(args, " "), out)
		}
	}
	// The monitoring objects and every optional object at once.
	runTool(t, helm, "lint", "--strict", chartDir, "--set", "monitoring.enabled=true,controller.podDisruptionBudget.enabled=true")
}

// TestHelmTemplate renders the chart with each values file and checks the
// result as the kustomize renderings are checked.
func TestHelmTemplate(t *testing.T) {
	for _, c := range chartCases {
		name := c.values
		if name == "" {
			name = "defaults"
		}
		t.Run(name, func(t *testing.T) {
			o := decodeAll(t, "helm "+name, helmTemplate(t, false, valuesArgs(c.values)...))
			if t.Failed() {
				return
			}
			// The chart installs into the release's namespace, which
			// `helm install --create-namespace` or the operator makes:
			// checkNamespaces wants the Namespace object kustomize ships.
			o.all = append(o.all, &corev1.Namespace{
				ObjectMeta: metav1.ObjectMeta{Name: namespace, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}},
			})
			checkObjects(t, o)
		})
	}
}

// TestHelmTemplateValues renders the chart with values other than the
// defaults and checks that each reaches the objects it is for.
func TestHelmTemplateValues(t *testing.T) {
	vals := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(vals, []byte(`
image: {repository: registry.example/vb, tag: v9.9.9, pullPolicy: Always}
store:
  url: s3://bucket-x?region=eu-central-1&endpoint=https://s3.example&path_style=true
  attacher: nbdfuse
  credentials: {secretName: my-keys, create: true, accessKeyID: AK, secretAccessKey: SK, sessionToken: ST}
serviceAccount:
  controller: {annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::1:role/vb"}}
  node: {annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::1:role/vb"}}
kubeletDir: /var/snap/microk8s/common/var/lib/kubelet/
volumeDefaults: {durability: store, drainInterval: 2s}
storageClasses:
  - name: fast
    fsType: xfs
    isDefault: true
    parameters: {durability: node, mkfsOptions: "-m 0"}
    reclaimPolicy: Retain
    volumeBindingMode: WaitForFirstConsumer
  - name: raw
volumeSnapshotClass: {name: snaps, deletionPolicy: Retain, isDefault: true}
controller:
  replicas: 3
  nodeSelector: {role: storage}
  resources: {limits: {memory: 1Gi}}
  logFormat: json
  maxSnapshotsPerVolume: -1
node:
  logFormat: json
  memoryBudget: 4GiB
  memoryOverhead: 512Mi
  volumeEvents: false
  healthCheckInterval: 30s
  walHostPath: /mnt/nvme/wal
  drainLagBytes: 536870912
  drainLagAge: 2m
  maxVolumesPerNode: 40
  nodeSelector: {storage: "yes"}
  tolerations: [{key: dedicated, operator: Equal, value: storage, effect: NoSchedule}]
  resources: {requests: {cpu: 100m}, limits: {memory: 6Gi}}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	o := decodeAll(t, "helm values", helmTemplate(t, false, "-f", vals))
	if t.Failed() {
		return
	}
	dep := one[*appsv1.Deployment](t, o, "Deployment")
	ds := one[*appsv1.DaemonSet](t, o, "DaemonSet")
	ctl := container(t, &dep.Spec.Template.Spec, "controller")
	nd := container(t, &ds.Spec.Template.Spec, "node")
	for _, c := range []*corev1.Container{ctl, nd} {
		if c.Image != "registry.example/vb:v9.9.9" || c.ImagePullPolicy != corev1.PullAlways {
			t.Errorf("%s: image %s (%s), want registry.example/vb:v9.9.9 (Always)", c.Name, c.Image, c.ImagePullPolicy)
		}
	}
	if *dep.Spec.Replicas != 3 || dep.Spec.Template.Spec.NodeSelector["role"] != "storage" {
		t.Errorf("controller: replicas %d, nodeSelector %v", *dep.Spec.Replicas, dep.Spec.Template.Spec.NodeSelector)
	}
	if ctl.Resources.Limits.Memory().String() != "1Gi" {
		t.Errorf("controller: memory limit %s, want 1Gi", ctl.Resources.Limits.Memory())
	}
	if ds.Spec.Template.Spec.NodeSelector["storage"] != "yes" || len(ds.Spec.Template.Spec.Tolerations) != 1 ||
		ds.Spec.Template.Spec.Tolerations[0].Key != "dedicated" {
		t.Errorf("node: nodeSelector %v, tolerations %v", ds.Spec.Template.Spec.NodeSelector, ds.Spec.Template.Spec.Tolerations)
	}
	// The memory request is derived (budget + overhead), the limit set.
	if nd.Resources.Requests.Cpu().String() != "100m" || nd.Resources.Requests.Memory().String() != "4608Mi" ||
		nd.Resources.Limits.Memory().String() != "6Gi" {
		t.Errorf("node: resources %v, want requests cpu 100m, memory 4608Mi, limits memory 6Gi", nd.Resources)
	}
	hasArgs(t, nd, "--drain-lag-bytes=536870912", "--drain-lag-age=2m", "--max-volumes-per-node=40",
		"--memory-budget=4GiB", "--volume-events=false", "--health-check-interval=30s", "--logging-format=json")
	hasArgs(t, ctl, "--max-snapshots-per-volume=-1", "--logging-format=json")
	kubelet := "/var/snap/microk8s/common/var/lib/kubelet"
	hasArgs(t, container(t, &ds.Spec.Template.Spec, "node-driver-registrar"),
		"--kubelet-registration-path="+kubelet+"/plugins/csi.viperblock.io/csi.sock")
	hostPaths := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
		if v.Secret != nil && v.Secret.SecretName != "my-keys" {
			t.Errorf("node: volume %s mounts Secret %s, want my-keys", v.Name, v.Secret.SecretName)
		}
	}
	for name, want := range map[string]string{
		"kubelet-dir": kubelet, "plugin-dir": kubelet + "/plugins/csi.viperblock.io",
		"registration-dir": kubelet + "/plugins_registry", "wal-dir": "/mnt/nvme/wal",
	} {
		if hostPaths[name] != want {
			t.Errorf("node: hostPath of %s is %q, want %q", name, hostPaths[name], want)
		}
	}
	var kubeletMount bool
	for _, m := range nd.VolumeMounts {
		if m.Name == "kubelet-dir" {
			kubeletMount = m.MountPath == kubelet
		}
	}
	if !kubeletMount {
		t.Errorf("node: kubelet-dir not mounted at %s (the kubelet passes host paths)", kubelet)
	}
	cm := map[string]string{}
	for _, c := range all[*corev1.ConfigMap](o) {
		if c.Name == "viperblock-csi-config" {
			cm = c.Data
		}
	}
	if cm["VIPERBLOCK_STORE"] != "s3://bucket-x?region=eu-central-1&endpoint=https://s3.example&path_style=true" || cm["VIPERBLOCK_ATTACHER"] != "nbdfuse" {
		t.Errorf("viperblock-csi-config: %v", cm)
	}
	sec := one[*corev1.Secret](t, o, "Secret")
	if sec.Name != "my-keys" || !reflect.DeepEqual(sec.StringData, map[string]string{
		"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "ST"}) {
		t.Errorf("Secret %s: %v", sec.Name, sec.StringData)
	}
	for _, sa := range all[*corev1.ServiceAccount](o) {
		if sa.Annotations["eks.amazonaws.com/role-arn"] != "arn:aws:iam::1:role/vb" {
			t.Errorf("ServiceAccount %s: annotations %v, want the role ARN", sa.Name, sa.Annotations)
		}
	}
	scs := all[*storagev1.StorageClass](o)
	if len(scs) != 2 {
		t.Fatalf("%d StorageClasses, want 2 (fast, raw)", len(scs))
	}
	for _, sc := range scs {
		var want map[string]string
		switch sc.Name {
		case "fast":
			want = map[string]string{"csi.storage.k8s.io/fstype": "xfs", "durability": "node", "drainInterval": "2s", "mkfsOptions": "-m 0"}
			if sc.Annotations["storageclass.kubernetes.io/is-default-class"] != "true" || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimRetain ||
				*sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
				t.Errorf("StorageClass fast: %v %v %v", sc.Annotations, *sc.ReclaimPolicy, *sc.VolumeBindingMode)
			}
		case "raw":
			want = map[string]string{"durability": "store", "drainInterval": "2s"}
			if *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimDelete || !*sc.AllowVolumeExpansion {
				t.Errorf("StorageClass raw: reclaimPolicy %v, allowVolumeExpansion %v", *sc.ReclaimPolicy, *sc.AllowVolumeExpansion)
			}
		default:
			t.Errorf("unexpected StorageClass %s", sc.Name)
		}
		if !reflect.DeepEqual(sc.Parameters, want) {
			t.Errorf("StorageClass %s: parameters %v, want %v", sc.Name, sc.Parameters, want)
		}
	}
	vsc := one[*snapshotv1.VolumeSnapshotClass](t, o, "VolumeSnapshotClass")
	if vsc.Name != "snaps" || vsc.DeletionPolicy != snapshotv1.VolumeSnapshotContentRetain ||
		vsc.Annotations["snapshot.storage.kubernetes.io/is-default-class"] != "true" {
		t.Errorf("VolumeSnapshotClass %s: %v %v", vsc.Name, vsc.DeletionPolicy, vsc.Annotations)
	}
}

// TestHelmSnapshotClassNeedsAPI: without the snapshot CRDs, the chart
// renders no VolumeSnapshotClass (its install would fail on the unknown kind).
func TestHelmSnapshotClassNeedsAPI(t *testing.T) {
	out := helmTemplate(t, true)
	if bytes.Contains(out, []byte("kind: VolumeSnapshotClass")) {
		t.Error("VolumeSnapshotClass rendered on a cluster without snapshot.storage.k8s.io/v1")
	}
	if !bytes.Contains(out, []byte("kind: DaemonSet")) {
		t.Error("the rendering without the snapshot API has no DaemonSet")
	}
}

// TestHelmTemplateRejects: values the chart cannot honour fail the
// rendering with a message naming them.
func TestHelmTemplateRejects(t *testing.T) {
	helm := tool(t, "helm")
	for _, c := range []struct{ set, want string }{
		{"store.url=", "store.url is required"},
		{"store.credentials.create=true", "store.credentials.accessKeyID is required"},
		{"node.memoryBudget=64MiB", "node.memoryBudget=64MiB is smaller than one volume's share, 96MiB"},
		{"node.memoryBudget=1.5GiB", `node.memoryBudget="1.5GiB": want a whole number`},
		{"node.memoryBudget=2GiBs", `unknown unit "gibs"`},
		{"node.memoryOverhead=lots", `node.memoryOverhead="lots": want a whole number`},
		{"node.maxVolumesPerNode=22", "node.memoryBudget=2GiB over node.maxVolumesPerNode=22 leaves each volume less than 96MiB"},
		{"node.logFormat=xml", `node.logFormat="xml": want text or json`},
		{"controller.logFormat=JSON", `controller.logFormat="JSON": want text or json`},
	} {
		out, err := runToolErr(helm, "template", "x", chartDir, "--set", c.set)
		if err == nil || !bytes.Contains(out, []byte(c.want)) {
			t.Errorf("helm template --set %s: err %v, want an error with %q:\n%s", c.set, err, c.want, firstLines(out, 5))
		}
	}
}

// TestHelmNodeMemory: the node container's memory request and limit are
// the budget, as the node plugin reads --memory-budget (pkg/units), plus
// node.memoryOverhead; without a budget, the overhead alone.
func TestHelmNodeMemory(t *testing.T) {
	for _, c := range []struct {
		set, budget, want string
	}{
		{"", "2GiB", "2304Mi"},
		{"node.memoryBudget=1536MiB", "1536MiB", "1792Mi"},
		{"node.memoryBudget=3G", "3G", "3328Mi"},
		{"node.memoryBudget=4Gi,node.memoryOverhead=300Mi", "4Gi", "4396Mi"},
		{"node.memoryBudget=1000MB", "1000MB", "1268435456"},
		{"node.memoryBudget=0200MiB,node.memoryOverhead=1000KiB", "0200MiB", "205800Ki"},
		{"node.memoryBudget=2147483648", "2147483648", "2304Mi"},
		{"node.memoryBudget=", "", "256Mi"},
	} {
		var args []string
		if c.set != "" {
			args = []string{"--set", c.set}
		}
		o := decodeAll(t, "helm --set "+c.set, helmTemplate(t, false, args...))
		if t.Failed() {
			return
		}
		nd := container(t, &one[*appsv1.DaemonSet](t, o, "DaemonSet").Spec.Template.Spec, "node")
		budget, ok := argPrefix(nd, "--memory-budget=")
		if budget != c.budget || ok != (c.budget != "") {
			t.Errorf("--set %s: --memory-budget=%q (present %v), want %q", c.set, budget, ok, c.budget)
		}
		req, limit := nd.Resources.Requests.Memory(), nd.Resources.Limits.Memory()
		if req.String() != c.want || limit.String() != c.want {
			t.Errorf("--set %s: memory request %s, limit %s, want %s", c.set, req, limit, c.want)
		}
		// The request is the budget and the overhead as the driver reads
		// sizes.
		if c.budget != "" {
			overhead := "256Mi"
			if v, ok := strings.CutPrefix(c.set, "node.memoryBudget="+c.budget+",node.memoryOverhead="); ok {
				overhead = v
			}
			b, err := units.Parse(c.budget)
			if err != nil {
				t.Fatal(err)
			}
			ov, err := units.Parse(overhead)
			if err != nil {
				t.Fatal(err)
			}
			if req.Value() != b+ov {
				t.Errorf("--set %s: memory request %d bytes, want the budget %d + the overhead %d", c.set, req.Value(), b, ov)
			}
		}
	}
}

// TestHelmNodeAPIAccess: with volume events the node pod mounts its token
// and the chart grants exactly what the events need; without them the node
// plugin is told so and gets neither.
func TestHelmNodeAPIAccess(t *testing.T) {
	for _, c := range []struct {
		set         string
		token, rbac bool
		saToken     string // the ServiceAccount's automountServiceAccountToken
		noEvents    bool
	}{
		{"", true, true, "", false},
		{"rbac.node.create=false", true, false, "", false},
		{"node.volumeEvents=false", false, false, "false", true},
		{"node.volumeEvents=false,serviceAccount.node.automountToken=true", true, false, "", true},
	} {
		var args []string
		if c.set != "" {
			args = []string{"--set", c.set}
		}
		o := decodeAll(t, "helm --set "+c.set, helmTemplate(t, false, args...))
		if t.Failed() {
			return
		}
		spec := &one[*appsv1.DaemonSet](t, o, "DaemonSet").Spec.Template.Spec
		if tok := spec.AutomountServiceAccountToken; tok == nil || *tok != c.token {
			t.Errorf("--set %s: pod automountServiceAccountToken %v, want %v", c.set, show(tok), c.token)
		}
		for _, sa := range all[*corev1.ServiceAccount](o) {
			if sa.Name != "viperblock-csi-node" {
				continue
			}
			got := ""
			if sa.AutomountServiceAccountToken != nil {
				got = fmt.Sprint(*sa.AutomountServiceAccountToken)
			}
			if got != c.saToken {
				t.Errorf("--set %s: ServiceAccount automountServiceAccountToken %q, want %q", c.set, got, c.saToken)
			}
		}
		var role, binding bool
		for _, r := range all[*rbacv1.ClusterRole](o) {
			role = role || r.Name == "viperblock-csi-node"
		}
		for _, b := range all[*rbacv1.ClusterRoleBinding](o) {
			binding = binding || b.Name == "viperblock-csi-node"
		}
		if role != c.rbac || binding != c.rbac {
			t.Errorf("--set %s: ClusterRole %v, ClusterRoleBinding %v viperblock-csi-node, want %v", c.set, role, binding, c.rbac)
		}
		_, off := argPrefix(container(t, spec, "node"), "--volume-events=")
		if off != c.noEvents {
			t.Errorf("--set %s: --volume-events=false %v, want %v", c.set, off, c.noEvents)
		}
	}
}

// comparedKinds are the objects the chart and kustomize must render alike.
var comparedKinds = map[string]bool{
	"DaemonSet": true, "Deployment": true, "StatefulSet": true, "ServiceAccount": true,
	"ClusterRole": true, "ClusterRoleBinding": true, "Role": true, "RoleBinding": true,
	"CSIDriver": true, "StorageClass": true, "VolumeSnapshotClass": true, "ConfigMap": true,
	"PodDisruptionBudget": true, "Service": true, "ServiceMonitor": true, "PrometheusRule": true,
}

// onlyKustomize are the objects kustomize ships that the chart leaves to the
// operator, and why.
var onlyKustomize = map[string]string{
	"Namespace": "helm install -n NAMESPACE --create-namespace makes it (the README says how to label it for Pod Security)",
	"Secret":    "the base's example credentials; the chart creates the Secret only with store.credentials.create",
}

// TestHelmMatchesKustomize renders each chart case and its kustomization
// and names every difference between their workload objects.
func TestHelmMatchesKustomize(t *testing.T) {
	cases := append([]struct{ values, kustomization string }{}, chartCases...)
	for _, c := range cases {
		name := c.kustomization
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			k := render(t, filepath.Join(deployDir, c.kustomization))
			h := helmTemplate(t, false, valuesArgs(c.values)...)
			for _, d := range diffRenderings(t, k, h) {
				t.Error(d)
			}
		})
	}
	// The monitoring objects: the chart with monitoring.enabled against
	// the base with the monitoring component.
	t.Run("base+components_monitoring", func(t *testing.T) {
		dir := t.TempDir()
		writeKustomization(t, dir, filepath.Join(deployDir, "base"), filepath.Join(deployDir, "components", "monitoring"))
		k := render(t, dir)
		h := helmTemplate(t, false, "--set", "monitoring.enabled=true")
		for _, d := range diffRenderings(t, k, h) {
			t.Error(d)
		}
	})
}

// writeKustomization writes DIR/kustomization.yaml with one resource and
// components.
func writeKustomization(t *testing.T, dir, resource string, components ...string) {
	t.Helper()
	rel := func(p string) string {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := filepath.Rel(dir, abs)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\n", rel(resource))
	if len(components) > 0 {
		b.WriteString("components:\n")
		for _, c := range components {
			fmt.Fprintf(&b, "  - %s\n", rel(c))
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// helmLabels are the labels Helm's conventions add to every object.
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"}

// kustomizeHash is the suffix configMapGenerator appends to a name.
var kustomizeHash = regexp.MustCompile(`^(viperblock-csi-config)-[a-z0-9]{10}$`)

// parseRendering returns the objects of a rendering by "Kind ns/name",
// normalised.
func parseRendering(t *testing.T, data []byte) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	for _, doc := range splitYAML(t, data) {
		var o map[string]any
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatal(err)
		}
		if o == nil {
			continue
		}
		normalise(o)
		md, _ := o["metadata"].(map[string]any)
		key := fmt.Sprintf("%v %v/%v", o["kind"], md["namespace"], md["name"])
		if md["namespace"] == nil {
			key = fmt.Sprintf("%v %v", o["kind"], md["name"])
		}
		objs[key] = o
	}
	return objs
}

// normalise removes what legitimately differs between the two renderings:
// Helm's labels, the checksum annotation that rolls the pods on a config
// change (kustomize's hashed ConfigMap name does that), and that hash.
func normalise(o map[string]any) {
	md, _ := o["metadata"].(map[string]any)
	if labels, ok := md["labels"].(map[string]any); ok {
		for _, l := range helmLabels {
			delete(labels, l)
		}
	}
	if n, ok := md["name"].(string); ok {
		md["name"] = kustomizeHash.ReplaceAllString(n, "$1")
	}
	if tmpl, ok := dig(o, "spec", "template", "metadata").(map[string]any); ok {
		if ann, ok := tmpl["annotations"].(map[string]any); ok {
			delete(ann, "checksum/config")
			if len(ann) == 0 {
				delete(tmpl, "annotations")
			}
		}
	}
	walk(o, func(m map[string]any) {
		if ref, ok := m["configMapRef"].(map[string]any); ok {
			if n, ok := ref["name"].(string); ok {
				ref["name"] = kustomizeHash.ReplaceAllString(n, "$1")
			}
		}
	})
}

func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func walk(v any, f func(map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		f(x)
		for _, c := range x {
			walk(c, f)
		}
	case []any:
		for _, c := range x {
			walk(c, f)
		}
	}
}

// diffRenderings names every difference between kustomize's rendering k and
// Helm's h: objects only one has, and fields that differ.
func diffRenderings(t *testing.T, k, h []byte) []string {
	t.Helper()
	ko, ho := parseRendering(t, k), parseRendering(t, h)
	var diffs []string
	keys := map[string]bool{}
	for key := range ko {
		keys[key] = true
	}
	for key := range ho {
		keys[key] = true
	}
	sorted := make([]string, 0, len(keys))
	for key := range keys {
		sorted = append(sorted, key)
	}
	sort.Strings(sorted)
	for _, key := range sorted {
		kind := strings.Fields(key)[0]
		kv, inK := ko[key]
		hv, inH := ho[key]
		switch {
		case !inH:
			if _, ok := onlyKustomize[kind]; !ok {
				diffs = append(diffs, fmt.Sprintf("%s: rendered by kustomize only", key))
			}
		case !inK:
			diffs = append(diffs, fmt.Sprintf("%s: rendered by the chart only", key))
		case comparedKinds[kind]:
			diffs = append(diffs, diffValues(key, "", kv, hv)...)
		default:
			diffs = append(diffs, fmt.Sprintf("%s: kind %s is not compared: add it to comparedKinds or onlyKustomize", key, kind))
		}
	}
	return diffs
}

// diffValues compares two decoded YAML values; lists of objects with a
// name are compared by name, so a difference names the container, volume or
// port it is in.
func diffValues(obj, path string, k, h any) []string {
	if reflect.DeepEqual(k, h) {
		return nil
	}
	km, kok := k.(map[string]any)
	hm, hok := h.(map[string]any)
	if kok && hok {
		var out []string
		for _, key := range unionKeys(km, hm) {
			out = append(out, diffValues(obj, path+"."+key, km[key], hm[key])...)
		}
		return out
	}
	kl, kok := k.([]any)
	hl, hok := h.([]any)
	if kok && hok && named(kl) && named(hl) {
		kn, hn := byName(kl), byName(hl)
		var out []string
		for _, n := range unionKeys(kn, hn) {
			out = append(out, diffValues(obj, fmt.Sprintf("%s[name=%s]", path, n), kn[n], hn[n])...)
		}
		// Only the order of containers means something (they start in
		// it); volumes, mounts, ports and env are sets by name.
		if ko, ho := names(kl), names(hl); (strings.HasSuffix(path, ".containers") || strings.HasSuffix(path, ".initContainers")) &&
			len(ko) == len(ho) && !slices.Equal(ko, ho) {
			out = append(out, fmt.Sprintf("%s: %s: kustomize's order %v, the chart's %v", obj, strings.TrimPrefix(path, "."), ko, ho))
		}
		return out
	}
	return []string{fmt.Sprintf("%s: %s: kustomize %s, chart %s", obj, strings.TrimPrefix(path, "."), show(k), show(h))}
}

func show(v any) string {
	if v == nil {
		return "(absent)"
	}
	b, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	s := strings.TrimSpace(string(b))
	if strings.Contains(s, "\n") {
		return "\n    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
	}
	return s
}

func unionKeys[V any](a, b map[string]V) []string {
	seen := map[string]bool{}
	var keys []string
	for _, m := range []map[string]V{a, b} {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	return keys
}

func named(l []any) bool {
	if len(l) == 0 {
		return false
	}
	seen := map[string]bool{}
	for _, v := range l {
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		n, ok := m["name"].(string)
		if !ok || seen[n] {
			return false
		}
		seen[n] = true
	}
	return true
}

func names(l []any) []string {
	var n []string
	for _, v := range l {
		n = append(n, v.(map[string]any)["name"].(string))
	}
	return n
}

func byName(l []any) map[string]any {
	m := map[string]any{}
	for _, v := range l {
		m[v.(map[string]any)["name"].(string)] = v
	}
	return m
}

// TestHelmDiffNamesDifferences: the comparison finds and names a changed
// field, a changed arg, a missing object and an extra one.
func TestHelmDiffNamesDifferences(t *testing.T) {
	k := render(t, filepath.Join(deployDir, "base"))
	h := helmTemplate(t, false, "--set", "controller.replicas=3,node.logLevel=5,volumeSnapshotClass.create=false,controller.podDisruptionBudget.enabled=true")
	got := strings.Join(diffRenderings(t, k, h), "\n")
	for _, want := range []string{
		"Deployment viperblock-system/viperblock-csi-controller: spec.replicas: kustomize 1, chart 3",
		"DaemonSet viperblock-system/viperblock-csi-node: spec.template.spec.containers[name=node].args:",
		"VolumeSnapshotClass viperblock-snapshots: rendered by kustomize only",
		"PodDisruptionBudget viperblock-system/viperblock-csi-controller: rendered by the chart only",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the differences do not name %q; they are:\n%s", want, got)
		}
	}
}

// TestChartValuesDocumented: every value of values.yaml is in the chart
// README's table (itself or the value it is part of).
func TestChartValuesDocumented(t *testing.T) {
	var values map[string]any
	readYAMLLoose(t, filepath.Join(chartDir, "values.yaml"), &values)
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var leaves []string
	var flatten func(prefix string, v any)
	flatten = func(prefix string, v any) {
		if m, ok := v.(map[string]any); ok && len(m) > 0 {
			for k, c := range m {
				flatten(strings.TrimPrefix(prefix+"."+k, "."), c)
			}
			return
		}
		leaves = append(leaves, prefix)
	}
	flatten("", values)
	sort.Strings(leaves)
	for _, leaf := range leaves {
		parts := strings.Split(leaf, ".")
		documented := false
		for n := len(parts); n >= 1 && !documented; n-- {
			_, topIsMap := values[parts[0]].(map[string]any)
			if n == 1 && topIsMap {
				break
			}
			documented = bytes.Contains(readme, []byte("`"+strings.Join(parts[:n], ".")+"`"))
		}
		if !documented {
			t.Errorf("value %s is not in %s/README.md's table", leaf, chartDir)
		}
	}
	if len(leaves) < 20 {
		t.Fatalf("only %d values found in values.yaml", len(leaves))
	}
}

func readYAMLLoose(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

var versionRef = regexp.MustCompile(`external-snapshotter[^\n]*?(?:ref=| )(v[0-9]+\.[0-9]+\.[0-9]+)`)

// TestSnapshotterVersion: the snapshot CRDs' install commands in the docs,
// the docs' mentions of external-snapshotter, and scripts/snapshot-crds.sh
// name the version the e2e installs (SNAPSHOTTER_VERSION in lib.sh).
func TestSnapshotterVersion(t *testing.T) {
	lib, err := os.ReadFile("lib.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^SNAPSHOTTER_VERSION=(v[0-9.]+)$`).FindSubmatch(lib)
	if m == nil {
		t.Fatal("lib.sh sets no SNAPSHOTTER_VERSION")
	}
	want := string(m[1])
	script, err := runToolErr("bash", "../../scripts/snapshot-crds.sh", "--print")
	if err != nil {
		t.Fatalf("scripts/snapshot-crds.sh --print: %v\n%s", err, script)
	}
	cmds := strings.Split(strings.TrimSpace(string(script)), "\n")
	if len(cmds) != 2 {
		t.Fatalf("scripts/snapshot-crds.sh --print printed %q, want two commands", script)
	}
	for _, c := range cmds {
		if !strings.HasSuffix(c, "?ref="+want) {
			t.Errorf("scripts/snapshot-crds.sh: %q is not at %s", c, want)
		}
	}
	for _, doc := range []string{"../../README.md", "../../deploy/kubernetes/README.md", chartDir + "/README.md", deployDir + "/base/kustomization.yaml"} {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		found := versionRef.FindAllSubmatch(data, -1)
		if len(found) == 0 {
			t.Errorf("%s names no external-snapshotter version", doc)
		}
		for _, f := range found {
			if string(f[1]) != want {
				t.Errorf("%s: %q names %s, the e2e installs %s", doc, f[0], f[1], want)
			}
		}
	}
	// The two READMEs show the script's commands, word for word.
	for _, doc := range []string{"../../README.md", "../../deploy/kubernetes/README.md"} {
		data, _ := os.ReadFile(doc)
		for _, c := range cmds {
			if !bytes.Contains(data, []byte(c)) {
				t.Errorf("%s does not show %q", doc, c)
			}
		}
	}
}
