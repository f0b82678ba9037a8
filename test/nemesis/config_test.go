package nemesis

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

// config is the nemesis's configuration, from the environment (see the
// package doc for the variables).
type config struct {
	runs     int
	seed     uint64
	only     int // run only this schedule; -1 for all
	minDur   time.Duration
	maxDur   time.Duration
	lease    time.Duration // lease duration the schedule is timed by
	leases   string        // auto, on, off: pass lease_duration= to the plugin
	durab    string        // auto, node, store, off: pass durability= to the plugin
	drain    time.Duration // the plugin's drain_interval=
	env      []string      // added to nbdkit's environment
	logDir   string        // keep nbdkit logs here ("": temporary)
	blocks   int           // blocks clients write (the first ones of the volume)
	volBytes int64
	events   map[string]bool // event kinds the schedules may use
}

// eventKinds are the schedule's kinds of events (NEMESIS_EVENTS).
var eventKinds = []string{"partition", "pause", "crash", "move", "takeover", "lose", "retire"}

func loadConfig(t *testing.T) config {
	t.Helper()
	c := config{runs: 2, only: -1, minDur: 20 * time.Second, maxDur: 20 * time.Second,
		lease: 3 * time.Second, leases: "auto", durab: "auto", drain: time.Second,
		blocks: 256, volBytes: 16 << 20}
	bad := func(name string, err error) {
		t.Fatalf("%s=%q: %v", name, os.Getenv(name), err)
	}
	if v := os.Getenv("NEMESIS_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			bad("NEMESIS_RUNS", fmt.Errorf("want a positive number of schedules"))
		}
		c.runs = n
		c.minDur, c.maxDur = 20*time.Second, 40*time.Second
	}
	c.seed = uint64(time.Now().UnixNano())
	if v := os.Getenv("NEMESIS_SEED"); v != "" {
		s, err := testutil.ParseSeed(v)
		if err != nil {
			bad("NEMESIS_SEED", err)
		}
		c.seed = s
	}
	if v := os.Getenv("NEMESIS_ONLY"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			bad("NEMESIS_ONLY", fmt.Errorf("want a schedule index"))
		}
		c.only = n
		c.runs = max(c.runs, n+1)
	}
	if v := os.Getenv("NEMESIS_DURATION"); v != "" {
		lo, hi, _ := strings.Cut(v, "-")
		if hi == "" {
			hi = lo
		}
		a, err1 := time.ParseDuration(lo)
		b, err2 := time.ParseDuration(hi)
		if err1 != nil || err2 != nil || a <= 0 || b < a {
			bad("NEMESIS_DURATION", fmt.Errorf("want a duration (30s) or a range (20s-40s)"))
		}
		c.minDur, c.maxDur = a, b
	}
	if v := os.Getenv("NEMESIS_LEASE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			bad("NEMESIS_LEASE", fmt.Errorf("want a positive duration"))
		}
		c.lease = d
	}
	if v := os.Getenv("NEMESIS_DRAIN_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			bad("NEMESIS_DRAIN_INTERVAL", fmt.Errorf("want a positive duration"))
		}
		c.drain = d
	}
	if v := os.Getenv("NEMESIS_LEASES"); v != "" {
		if v != "auto" && v != "on" && v != "off" {
			bad("NEMESIS_LEASES", fmt.Errorf("want auto, on or off"))
		}
		c.leases = v
	}
	if v := os.Getenv("NEMESIS_DURABILITY"); v != "" {
		if v != "auto" && v != "node" && v != "store" && v != "off" {
			bad("NEMESIS_DURABILITY", fmt.Errorf("want auto, node, store or off"))
		}
		c.durab = v
	}
	c.env = strings.Fields(os.Getenv("NEMESIS_PLUGIN_ENV"))
	for _, kv := range c.env {
		if !strings.Contains(kv, "=") {
			bad("NEMESIS_PLUGIN_ENV", fmt.Errorf("want space-separated KEY=VALUE pairs"))
		}
	}
	c.logDir = os.Getenv("NEMESIS_LOGDIR")
	c.events = map[string]bool{}
	for _, k := range eventKinds {
		c.events[k] = true
	}
	if v := os.Getenv("NEMESIS_EVENTS"); v != "" {
		c.events = map[string]bool{}
		for _, k := range strings.Split(v, ",") {
			k = strings.TrimSpace(k)
			if !slices.Contains(eventKinds, k) {
				bad("NEMESIS_EVENTS", fmt.Errorf("unknown event kind %q (known: %s)", k, strings.Join(eventKinds, ",")))
			}
			c.events[k] = true
		}
	}
	return c
}

// scheduleSeed derives schedule k's seed from the run's seed, so that
// NEMESIS_SEED=S NEMESIS_ONLY=K replays schedule K's decisions.
func scheduleSeed(seed uint64, k int) uint64 {
	x := seed + uint64(k+1)*0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
