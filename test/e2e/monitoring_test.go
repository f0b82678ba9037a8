package e2e

// The monitoring files (deploy/monitoring): the alerting rules through
// `promtool check rules` and `promtool test rules`, the Grafana dashboard's
// JSON (what an import needs, every query parsed by promtool), every metric
// either uses among the ones the driver exports, and the copies that the
// kustomize component and the Helm chart ship identical to the originals.

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "write the monitoring component's and the chart's copies of deploy/monitoring's files")

const monitoringDir = "../../deploy/monitoring"

// exportedMetrics are the series the alerts and the dashboard may use: the
// node plugin's engine and node metrics (docs/metrics.md; histograms as
// their _bucket, _sum and _count series) and Prometheus's own up.
var exportedMetrics = []string{
	"viperblock_volume_wal_pending_bytes",
	"viperblock_volume_wal_oldest_pending_seconds",
	"viperblock_volume_fenced",
	"viperblock_volume_up",
	"viperblock_store_requests_total",
	"viperblock_volume_flush_seconds",
	"viperblock_volume_cache_hits_total",
	"viperblock_volume_cache_misses_total",
	"viperblock_volume_ops_total",
	"viperblock_volume_bytes_total",
	"viperblock_volume_drains_total",
	"viperblock_volume_drain_seconds",
	"viperblock_volume_health_abnormal",
	"viperblock_volume_health_condition",
	"viperblock_node_wal_disk_avail_bytes",
	"viperblock_node_wal_disk_size_bytes",
	"up",
}

var histograms = []string{"viperblock_volume_flush_seconds", "viperblock_volume_drain_seconds"}

// copies are the files the monitoring component and the chart ship, and
// how each is made from deploy/monitoring's.
var copies = []struct {
	path string
	from string
	make func([]byte) []byte
}{
	{"../../deploy/kubernetes/components/monitoring/dashboard.json", "dashboard.json", nil},
	{"../../deploy/kubernetes/components/monitoring/prometheusrule.yaml", "alerts.yaml", prometheusRule},
	{chartDir + "/files/dashboard.json", "dashboard.json", nil},
	{chartDir + "/files/alerts.yaml", "alerts.yaml", nil},
}

// prometheusRule wraps a rules file's groups in a PrometheusRule, text for
// text.
func prometheusRule(rules []byte) []byte {
	var b bytes.Buffer
	b.WriteString("# Generated from deploy/monitoring/alerts.yaml by\n" +
		"# `go test ./test/e2e -run TestMonitoringCopies -update`; edit that file.\n" +
		"apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n" +
		"  name: viperblock-csi\n  namespace: viperblock-system\nspec:\n")
	lines := strings.Split(strings.TrimRight(string(rules), "\n"), "\n")
	for len(lines) > 0 && (strings.HasPrefix(lines[0], "#") || strings.TrimSpace(lines[0]) == "") {
		lines = lines[1:]
	}
	for _, l := range lines {
		if l == "" {
			b.WriteString("\n")
			continue
		}
		b.WriteString("  " + l + "\n")
	}
	return b.Bytes()
}

// TestMonitoringCopies: the component's and the chart's files are those of
// deploy/monitoring (kustomize and Helm read files only below their own
// directories). -update writes them.
func TestMonitoringCopies(t *testing.T) {
	for _, c := range copies {
		src, err := os.ReadFile(filepath.Join(monitoringDir, c.from))
		if err != nil {
			t.Fatal(err)
		}
		want := src
		if c.make != nil {
			want = c.make(src)
		}
		if *update {
			if err := os.WriteFile(c.path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		have, err := os.ReadFile(c.path)
		if err != nil || !bytes.Equal(have, want) {
			t.Errorf("%s is not made from deploy/monitoring/%s (%v): run go test ./test/e2e -run TestMonitoringCopies -update", c.path, c.from, err)
		}
	}
	// The PrometheusRule's groups are the rules file's, as data too.
	var rules struct {
		Groups any `json:"groups"`
	}
	var pr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   any    `json:"metadata"`
		Spec       struct {
			Groups any `json:"groups"`
		} `json:"spec"`
	}
	readYAML(t, filepath.Join(monitoringDir, "alerts.yaml"), &rules)
	readYAML(t, copies[1].path, &pr)
	if rules.Groups == nil || fmt.Sprint(rules.Groups) != fmt.Sprint(pr.Spec.Groups) {
		t.Errorf("the PrometheusRule's groups differ from deploy/monitoring/alerts.yaml's")
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

type rulesFile struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name  string `json:"name"`
	Rules []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert"`
	Record      string            `json:"record"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

type rulesTests struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name          string `json:"name"`
		Interval      string `json:"interval"`
		InputSeries   []any  `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestAlertRules runs promtool on the rules and their tests, and checks
// that the tests make every alert fire and also hold it quiet.
func TestAlertRules(t *testing.T) {
	var rf rulesFile
	readYAML(t, filepath.Join(monitoringDir, "alerts.yaml"), &rf)
	var rt rulesTests
	readYAML(t, filepath.Join(monitoringDir, "alerts_test.yaml"), &rt)
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tg := range rt.Tests {
		for _, a := range tg.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("alert %s: alerts_test.yaml has a case where it fires: %v, where it does not: %v; want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
			for _, m := range metricNames(r.Expr) {
				if !exported(m) {
					t.Errorf("alert %s uses %s, which the driver does not export", r.Alert, m)
				}
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a severity label and summary and description annotations", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatal("no alerts in deploy/monitoring/alerts.yaml")
	}
	for name := range fires {
		if !slices.ContainsFunc(rf.Groups, func(g ruleGroup) bool {
			return slices.ContainsFunc(g.Rules, func(r rule) bool { return r.Alert == name })
		}) {
			t.Errorf("alerts_test.yaml tests alert %s, which alerts.yaml does not have", name)
		}
	}

	promtool := tool(t, "promtool")
	out := runTool(t, promtool, "check", "rules", filepath.Join(monitoringDir, "alerts.yaml"))
	if !bytes.Contains(out, []byte(fmt.Sprintf("SUCCESS: %d rules found", n))) {
		t.Errorf("promtool check rules: want %d rules:\n%s", n, out)
	}
	out = runTool(t, promtool, "test", "rules", filepath.Join(monitoringDir, "alerts_test.yaml"))
	if !bytes.Contains(out, []byte("SUCCESS")) {
		t.Errorf("promtool test rules:\n%s", out)
	}
}

// TestAlertRuleTestsCanFail: promtool test rules fails when an expected
// alert does not fire (so TestAlertRules would catch a rule that broke).
func TestAlertRuleTestsCanFail(t *testing.T) {
	promtool := tool(t, "promtool")
	data, err := os.ReadFile(filepath.Join(monitoringDir, "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rules, err := os.ReadFile(filepath.Join(monitoringDir, "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The fenced volume's alert, expected a minute before its `for` ends.
	broken := strings.Replace(string(data), "- eval_time: 4m\n        alertname: ViperblockVolumeFenced", "- eval_time: 2m\n        alertname: ViperblockVolumeFenced", 1)
	if broken == string(data) {
		t.Fatal("alerts_test.yaml has no ViperblockVolumeFenced case at 4m to break")
	}
	for name, content := range map[string]string{"alerts.yaml": string(rules), "alerts_test.yaml": broken} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := runToolErr(promtool, "test", "rules", filepath.Join(dir, "alerts_test.yaml"))
	if err == nil || !bytes.Contains(out, []byte("ViperblockVolumeFenced")) {
		t.Errorf("promtool test rules passed a test that expects an alert too early: err %v\n%s", err, out)
	}
}

// promqlWords are the words of PromQL that are not metric names.
var promqlWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
}

var (
	promqlStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promqlMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promqlRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promqlGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promqlNumber   = regexp.MustCompile(`(^|[^A-Za-z0-9_:.])[0-9][0-9.eE+-]*[smhdwy]*`)
)

// metricNames returns the metric names a PromQL expression selects: what
// is left once strings, label matchers, ranges, grouping labels, numbers,
// keywords and function names are taken out.
func metricNames(expr string) []string {
	e := promqlStrings.ReplaceAllString(expr, `""`)
	e = promqlMatchers.ReplaceAllString(e, " ")
	e = promqlRanges.ReplaceAllString(e, " ")
	e = promqlGrouping.ReplaceAllString(e, " ")
	e = promqlNumber.ReplaceAllString(e, "$1 ")
	seen := map[string]bool{}
	var names []string
	for _, loc := range promqlIdent.FindAllStringIndex(e, -1) {
		w := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " \t\n")
		if promqlWords[strings.ToLower(w)] || strings.HasPrefix(rest, "(") || seen[w] {
			continue
		}
		seen[w] = true
		names = append(names, w)
	}
	sort.Strings(names)
	return names
}

func exported(m string) bool {
	if slices.Contains(exportedMetrics, m) {
		return true
	}
	for _, h := range histograms {
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			if m == h+s {
				return true
			}
		}
	}
	return false
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (node, le) (rate(viperblock_volume_flush_seconds_bucket{op="a{b}", node=~"$node"}[5m]))`: "viperblock_volume_flush_seconds_bucket",
		`a / on(x) group_left(y) b > bool 0.5 or absent(c{job="d"} == 1) unless up offset 5m`:            "a b c up",
		`histogram_quantile(0.99, x) * 1e3 + 4.5e-2 - count(y) without (z)`:                              "x y",
	} {
		if got := strings.Join(metricNames(expr), " "); got != want {
			t.Errorf("metricNames(%s) = %q, want %q", expr, got, want)
		}
	}
	if exported("viperblock_volume_flush_seconds_bucket") != true || exported("viperblock_volume_iops") != false {
		t.Error("exported: histogram series or an unknown name misjudged")
	}
}

// grafanaDashboard is what an import of the dashboard needs.
type grafanaDashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Panels        []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos *struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// dashboardVars are the values the dashboard's expressions are checked
// with: Grafana's own and the dashboard's variables.
var dashboardVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$node", ".*", "$volume_id", ".*", "${datasource}", "")

// TestDashboard checks the dashboard as Grafana imports it and parses every
// query with promtool (as recording rules: an offline parse).
func TestDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(monitoringDir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 || len(d.Panels) == 0 {
		t.Fatalf("dashboard.json: uid %q, title %q, schemaVersion %d, %d panels: want all", d.UID, d.Title, d.SchemaVersion, len(d.Panels))
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	for _, want := range []string{"datasource", "node", "volume_id"} {
		if vars[want] == "" {
			t.Errorf("dashboard.json: no template variable %s", want)
		}
	}
	ids := map[int]string{}
	var exprs []string
	titles := map[string]bool{}
	for _, p := range d.Panels {
		if p.ID == 0 || ids[p.ID] != "" {
			t.Errorf("panel %q: id %d is zero or also panel %q's", p.Title, p.ID, ids[p.ID])
		}
		ids[p.ID] = p.Title
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Title == "" || p.Type == "" {
			t.Errorf("panel %d: title %q, type %q", p.ID, p.Title, p.Type)
		}
		titles[p.Title] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no targets", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: target %q with refId %q", p.Title, tg.Expr, tg.RefID)
			}
			refs[tg.RefID] = true
			exprs = append(exprs, tg.Expr)
			for _, m := range metricNames(dashboardVars.Replace(tg.Expr)) {
				if !exported(m) {
					t.Errorf("panel %q uses %s, which the driver does not export", p.Title, m)
				}
			}
		}
	}
	// What the dashboard is for: each of these is a panel's title.
	for _, want := range []string{"IOPS by node", "IOPS by volume", "Throughput by node", "Throughput by volume",
		"FLUSH latency by node (p50, p99)", "FLUSH latency by volume (p99)", "Durability lag by node",
		"Durability lag: WAL bytes not in the store", "Durability lag: oldest write not in the store",
		"Store errors by volume", "Cache hit ratio by volume"} {
		if !titles[want] {
			t.Errorf("dashboard.json: no panel %q", want)
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			if s, _ := q["query"].(string); strings.HasPrefix(s, "label_values(") {
				inner := strings.TrimSuffix(strings.TrimPrefix(s, "label_values("), ")")
				if i := strings.LastIndex(inner, ","); i > 0 {
					exprs = append(exprs, strings.TrimSpace(inner[:i]))
				}
			}
		}
	}

	// promtool parses each expression as a recording rule.
	promtool := tool(t, "promtool")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(dashboardVars.Replace(e))
		fmt.Fprintf(&rules, "      - record: dashboard:expr%d\n        expr: %s\n", i, q)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runTool(t, promtool, "check", "rules", f)
	if !bytes.Contains(out, []byte(fmt.Sprintf("SUCCESS: %d rules found", len(exprs)))) {
		t.Errorf("promtool check rules of the dashboard's %d expressions:\n%s", len(exprs), out)
	}
	// And a broken expression fails that check.
	if err := os.WriteFile(f, []byte("groups:\n  - name: x\n    rules:\n      - record: x:y\n        expr: \"sum(rate(a[5m])\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runToolErr(promtool, "check", "rules", f); err == nil {
		t.Errorf("promtool check rules accepted a broken expression:\n%s", out)
	}
}

// TestMonitoringTargets: in the base with the monitoring component and in
// the chart with monitoring.enabled, each metrics Service selects the pods
// of one workload and targets a port they declare, under the number the
// Service names, and each ServiceMonitor selects one Service by a port
// name it has.
func TestMonitoringTargets(t *testing.T) {
	dir := t.TempDir()
	writeKustomization(t, dir, filepath.Join(deployDir, "base"), filepath.Join(deployDir, "components", "monitoring"))
	renderings := map[string][]byte{"kustomize": render(t, dir)}
	// The chart's too, where helm is installed (TestHelmTemplate skips or
	// fails without it).
	if findTool("helm") != "" {
		renderings["helm"] = helmTemplate(t, false, "--set", "monitoring.enabled=true")
	}
	for name, data := range renderings {
		objs := parseRendering(t, data)
		var services, monitors, workloads []map[string]any
		for _, o := range objs {
			switch o["kind"] {
			case "Service":
				services = append(services, o)
			case "ServiceMonitor":
				monitors = append(monitors, o)
			case "Deployment", "DaemonSet":
				workloads = append(workloads, o)
			}
		}
		if len(services) != 2 || len(monitors) != 2 {
			t.Errorf("%s: %d Services and %d ServiceMonitors, want 2 and 2 (node, controller)", name, len(services), len(monitors))
		}
		for _, svc := range services {
			sel, _ := dig(svc, "spec", "selector").(map[string]any)
			var pods []map[string]any
			for _, w := range workloads {
				if subset(sel, dig(w, "spec", "template", "metadata", "labels")) {
					pods = append(pods, w)
				}
			}
			if len(pods) != 1 {
				t.Errorf("%s: Service %v selects %d workloads, want 1", name, dig(svc, "metadata", "name"), len(pods))
				continue
			}
			for _, p := range list(dig(svc, "spec", "ports")) {
				port := p.(map[string]any)
				found := false
				for _, c := range list(dig(pods[0], "spec", "template", "spec", "containers")) {
					for _, cp := range list(dig(c, "ports")) {
						cp := cp.(map[string]any)
						if cp["name"] == port["targetPort"] && cp["containerPort"] == port["port"] {
							found = true
						}
					}
				}
				if !found {
					t.Errorf("%s: Service %v port %v targets %v, which %v does not declare as port %v", name,
						dig(svc, "metadata", "name"), port["name"], port["targetPort"], dig(pods[0], "metadata", "name"), port["port"])
				}
			}
		}
		for _, m := range monitors {
			sel, _ := dig(m, "spec", "selector", "matchLabels").(map[string]any)
			var match []map[string]any
			for _, svc := range services {
				if subset(sel, dig(svc, "metadata", "labels")) {
					match = append(match, svc)
				}
			}
			if len(match) != 1 {
				t.Errorf("%s: ServiceMonitor %v selects %d Services, want 1", name, dig(m, "metadata", "name"), len(match))
				continue
			}
			if dig(m, "metadata", "name") != dig(match[0], "metadata", "name") {
				t.Errorf("%s: ServiceMonitor %v selects Service %v: the alerts' job labels are the Services' names", name, dig(m, "metadata", "name"), dig(match[0], "metadata", "name"))
			}
			for _, e := range list(dig(m, "spec", "endpoints")) {
				found := false
				for _, p := range list(dig(match[0], "spec", "ports")) {
					found = found || p.(map[string]any)["name"] == e.(map[string]any)["port"]
				}
				if !found {
					t.Errorf("%s: ServiceMonitor %v scrapes port %v, which its Service does not have", name, dig(m, "metadata", "name"), e.(map[string]any)["port"])
				}
			}
		}
	}
}

// subset reports whether every label of sel is in labels (and sel has some).
func subset(sel map[string]any, labels any) bool {
	l, _ := labels.(map[string]any)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if l[k] != v {
			return false
		}
	}
	return true
}

// list is v as a YAML sequence (nil when it is none).
func list(v any) []any {
	l, _ := v.([]any)
	return l
}
