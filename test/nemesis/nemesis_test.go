package nemesis

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestNemesis runs NEMESIS_RUNS randomized fault schedules (default 2)
// against three real nbdkit servers of one volume, and checks the
// invariants of the package doc after each. It prints one line per
// schedule, `nemesis: seed S schedule K: PASS` or `... FAIL <reason>`, and
// at the end `nemesis: N passed, N failed`.
func TestNemesis(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the nemesis runs real servers for about a minute per two schedules (`make nemesis`, or go test without -short)")
	}
	cfg := loadConfig(t)
	c := newCluster(t, cfg)
	fmt.Printf("nemesis: seed %d, %d schedules, lease %s (passed to the plugin: %s; plugin has lease_duration=: %v, durability=: %v); rerun with NEMESIS_SEED=%d, one schedule with NEMESIS_ONLY=K\n",
		cfg.seed, cfg.runs, cfg.lease, cfg.leases, c.hasLeases, c.hasDurability, cfg.seed)
	passed, failed := 0, 0
	for k := 0; k < cfg.runs; k++ {
		if cfg.only >= 0 && k != cfg.only {
			continue
		}
		result := "FAIL harness error (see the test log)"
		t.Run(fmt.Sprintf("schedule%d", k), func(t *testing.T) {
			result = runSchedule(t, c, k)
		})
		fmt.Printf("nemesis: seed %d schedule %d: %s\n", cfg.seed, k, result)
		if result == "PASS" {
			passed++
		} else {
			failed++
		}
	}
	fmt.Printf("nemesis: %d passed, %d failed\n", passed, failed)
}

// runSchedule runs schedule k and returns "PASS" or "FAIL <reason>"; a
// failed schedule also fails t.
func runSchedule(t *testing.T, c *cluster, k int) string {
	cfg := c.cfg
	seed := scheduleSeed(cfg.seed, k)
	r := &run{t: t, c: c, k: k, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x6e656d65736973)),
		tag: seed | 1, volume: fmt.Sprintf("nem%d-%08x", k, uint32(seed)), dir: t.TempDir()}
	r.logDir = r.dir
	if cfg.logDir != "" {
		r.logDir = filepath.Join(cfg.logDir, fmt.Sprintf("seed%d-schedule%d", cfg.seed, k))
		if err := os.MkdirAll(r.logDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r.passLease = cfg.leases == "on" || cfg.leases == "auto" && c.hasLeases
	r.durability = "node"
	switch cfg.durab {
	case "node", "store":
		r.durability, r.passDurability = cfg.durab, true
	case "auto":
		if c.hasDurability {
			r.durability, r.passDurability = []string{"node", "store"}[r.rng.IntN(2)], true
		}
	}
	dur := cfg.minDur + time.Duration(r.rng.Int64N(int64(cfg.maxDur-cfg.minDur)+1))
	for i := range r.nodes {
		r.nodes[i] = &node{idx: i, walDir: filepath.Join(r.dir, fmt.Sprintf("wal%d.0", i)), proxy: c.proxies[i]}
	}
	t.Cleanup(func() {
		for _, p := range c.proxies {
			p.SetPartition(false)
		}
	})
	t.Logf("schedule %d: seed %d, volume %s, %s of faults, durability=%s (passed: %v), lease %s (passed: %v), drain_interval=%s",
		k, seed, r.volume, dur, r.durability, r.passDurability, cfg.lease, r.passLease, cfg.drain)

	out, err := runCmd(c.vblock, []string{"VBLOCK_STORE=" + c.storeURL(-1)}, "create", r.volume, "--size", fmt.Sprint(cfg.volBytes))
	if err != nil {
		t.Fatalf("vblock create: %v\n%s", err, out)
	}
	r.t0 = time.Now()
	r.launch(r.nodes[r.rng.IntN(numNodes)], "first owner")
	for r.now() < dur {
		r.sleep(min(scaled(r.rng, time.Second, 0.5, 2.5), dur-r.now()))
		if r.now() >= dur {
			break
		}
		r.reap()
		r.step()
	}
	r.finish()
	rec := r.record()
	t.Logf("schedule %d: %d servers, %d tenures; %s", k, len(r.incs), len(r.tenures), summary(rec.ops))
	vs := check(rec)
	if len(vs) == 0 {
		return "PASS"
	}
	for i, v := range vs {
		if i == 20 {
			t.Logf("... and %d more violations", len(vs)-20)
			break
		}
		t.Logf("VIOLATION %s", v)
	}
	t.Logf("servers and tenures:\n%s", r.describe())
	t.Logf("nbdkit logs (last lines):\n%s", r.logTail(12))
	t.Errorf("schedule %d (seed %d): %s", k, seed, summarize(vs))
	return "FAIL " + summarize(vs)
}
