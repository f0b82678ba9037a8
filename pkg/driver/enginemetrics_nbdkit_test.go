package driver

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// gatherNode gathers the node's metrics as the node plugin's endpoint
// serves them, from a pedantic registry (which checks every metric
// against its description).
func gatherNode(t *testing.T, ns *NodeServer) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	DefaultMetrics().Register(reg, ns.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// sample is the value of the family's series with these labels (-1: none).
func sample(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	mf := mfs[name]
	if mf == nil {
		return -1
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// TestEngineMetricsNbdkit: a volume staged with the real nbdkit and plugin
// reports its engine's counters through the node's collector, and they
// move with I/O; when its server dies, the volume is reported down.
func TestEngineMetricsNbdkit(t *testing.T) {
	storeURL, _ := needRealNbdkit(t)
	n := newRealNode(t, t.TempDir(), "node-a", storeURL)
	n.stage()
	vol := vid.String()
	l := func(kv ...string) map[string]string {
		m := map[string]string{"volume_id": vol}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	before := gatherNode(t, n.ns)
	if up := sample(before, "viperblock_volume_up", l()); up != 1 {
		t.Fatalf("viperblock_volume_up = %v, want 1", up)
	}
	wOps, wBytes := sample(before, "viperblock_volume_ops_total", l("op", "write")), sample(before, "viperblock_volume_bytes_total", l("op", "write"))
	if err := n.qemuIO("write -P 0x5a 0 1M", "read -P 0x5a 0 1M", "discard 1M 64k", "flush"); err != nil {
		t.Fatal(err)
	}
	// The connection's close drains the volume.
	var after map[string]*dto.MetricFamily
	testutil.Eventually(t, 30*time.Second, "the drain after the connection closed", func() (bool, error) {
		after = gatherNode(t, n.ns)
		return sample(after, "viperblock_volume_drains_total", l()) > 0, nil
	})
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"viperblock_volume_ops_total", l("op", "write"), wOps + 1},
		{"viperblock_volume_bytes_total", l("op", "write"), wBytes + 1<<20},
		{"viperblock_volume_bytes_total", l("op", "read"), 1 << 20},
		{"viperblock_volume_bytes_total", l("op", "trim"), 64 << 10},
		{"viperblock_volume_ops_total", l("op", "flush"), 1},
		{"viperblock_volume_flush_seconds", l(), 1},
		{"viperblock_volume_drain_seconds", l(), 1},
		{"viperblock_volume_drain_bytes_total", l(), 1 << 20},
		{"viperblock_store_requests_total", l("op", "put_if_match", "result", "ok"), 1},
		{"viperblock_store_request_seconds", l("op", "put"), 1},
		{"viperblock_volume_lease_renewals_total", l("result", "ok"), 0},
		{"viperblock_volume_fenced", l(), 0},
		{"viperblock_node_wal_disk_size_bytes", nil, 1},
	} {
		if got := sample(after, c.name, c.labels); got < c.min {
			t.Errorf("%s%v = %v, want at least %v", c.name, c.labels, got, c.min)
		}
	}
	if got := sample(after, "viperblock_volume_fenced", l()); got != 0 {
		t.Errorf("viperblock_volume_fenced = %v, want 0", got)
	}

	n.killServer()
	down := gatherNode(t, n.ns)
	if up := sample(down, "viperblock_volume_up", l()); up != 0 {
		t.Errorf("viperblock_volume_up with the server killed = %v, want 0", up)
	}
	if got := sample(down, "viperblock_volume_ops_total", l("op", "write")); got != -1 {
		t.Errorf("viperblock_volume_ops_total reported (%v) for a volume whose server is down", got)
	}
	checkDocumented(t, after)
}

// checkDocumented: every metric the node describes or exports is in
// docs/metrics.md, and the document names no metric the node does not
// describe (the controller's and the process's metrics aside).
func checkDocumented(t *testing.T, gathered map[string]*dto.MetricFamily) {
	t.Helper()
	documented := documentedMetrics(t)
	ch := make(chan *prometheus.Desc, 256)
	m := DefaultMetrics()
	for _, c := range []prometheus.Collector{m.Operations, m.Latency, m.StoreErrors, m.NbdkitRestarts, volumeCollector{}} {
		c.Describe(ch)
	}
	close(ch)
	described := map[string]bool{}
	name := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		sm := name.FindStringSubmatch(d.String())
		if sm == nil {
			t.Fatalf("no name in %s", d)
		}
		described[sm[1]] = true
	}
	for n := range gathered {
		described[n] = true
	}
	for n := range described {
		if !documented[n] {
			t.Errorf("%s is exported by the node but not documented in docs/metrics.md", n)
		}
	}
	for n := range documented {
		if !described[n] && !strings.HasPrefix(n, "viperblock_controller_") {
			t.Errorf("docs/metrics.md documents %s, which the node does not export", n)
		}
	}
}

// documentedMetrics are the metric names in the first column of
// docs/metrics.md's tables.
func documentedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(testutil.RepoRoot(t), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| `(viperblock_[a-z0-9_]+)`")
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			if out[m[1]] {
				t.Errorf("docs/metrics.md documents %s twice", m[1])
			}
			out[m[1]] = true
		}
	}
	if len(out) < 20 {
		t.Fatalf("docs/metrics.md documents only %d metrics: %v", len(out), slices.Sorted(func(yield func(string) bool) {
			for k := range out {
				if !yield(k) {
					return
				}
			}
		}))
	}
	return out
}
