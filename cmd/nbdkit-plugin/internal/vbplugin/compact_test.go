package vbplugin

import "testing"

func TestCompactParameters(t *testing.T) {
	var c Config
	for _, kv := range [][2]string{{"compact", "false"}, {"compact_bandwidth", "64MiB"}, {"compact_requests", "0"}, {"compact_ratio", "1.2"}} {
		if err := c.Set(kv[0], kv[1]); err != nil {
			t.Fatalf("%s=%s: %v", kv[0], kv[1], err)
		}
	}
	if o := c.Compaction; !o.Disabled || o.BytesPerSec != 64<<20 || o.RequestsPerSec != -1 || o.StoredRatio != 1.2 {
		t.Fatalf("parsed %+v", o)
	}
	for _, kv := range [][2]string{{"compact", "maybe"}, {"compact_bandwidth", "-1"}, {"compact_requests", "x"}, {"compact_ratio", "0.5"}} {
		var c Config
		if err := c.Set(kv[0], kv[1]); err == nil {
			t.Fatalf("%s=%s accepted", kv[0], kv[1])
		}
	}
}
