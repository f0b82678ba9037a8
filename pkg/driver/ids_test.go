package driver

import (
	"strings"
	"testing"
)

func TestParseVolumeID(t *testing.T) {
	good := map[string]volumeID{
		"default/pvc-1":                 {"default", "pvc-1"},
		"s3_b-2/a.b_c-d":                {"s3_b-2", "a.b_c-d"},
		"x/" + strings.Repeat("v", 128): {"x", strings.Repeat("v", 128)},
	}
	for s, want := range good {
		got, err := parseVolumeID(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("parseVolumeID(%q) = %v, %v", s, got, err)
		}
	}
	// Nothing that could name a path outside the store or the WAL directory.
	for _, s := range []string{"", "default", "/vol", "default/", "default/..", "default/.", "default/../x", "default/a/b",
		"../default/a", "default/.hidden", "default/-dash", "default/a b", "default/a\x00", "default/a\n",
		"def.ault/a", "toolongstorename-x/a", "default/" + strings.Repeat("v", 129), "default/csi.meta", "default/ä"} {
		if id, err := parseVolumeID(s); err == nil {
			t.Errorf("parseVolumeID(%q) accepted: %v", s, id)
		}
	}
}

func TestParseSnapshotID(t *testing.T) {
	id, err := parseSnapshotID("default/vol@snap-1")
	if err != nil || id != (snapshotID{"default", "vol", "snap-1"}) || id.String() != "default/vol@snap-1" {
		t.Fatalf("%v %v", id, err)
	}
	for _, s := range []string{"default/vol", "default/vol@", "default/vol@../x", "default/vol@a@b", "reallyfakesnapshotid", "@x", "default/@x"} {
		if id, err := parseSnapshotID(s); err == nil {
			t.Errorf("parseSnapshotID(%q) accepted: %v", s, id)
		}
	}
}

func TestDeriveName(t *testing.T) {
	if n := volumeNameFor("pvc-0f6d5c2e-1a2b-4c3d-8e9f-0123456789ab"); n != "pvc-0f6d5c2e-1a2b-4c3d-8e9f-0123456789ab" {
		t.Errorf("a PVC name changed: %s", n)
	}
	if n := snapshotNameFor("snapshot-0f6d5c2e-1a2b-4c3d-8e9f-0123456789ab"); n != "snapshot-0f6d5c2e-1a2b-4c3d-8e9f-0123456789ab" {
		t.Errorf("a snapshot name changed: %s", n)
	}
	seen := map[string]string{}
	for _, in := range []string{strings.Repeat("a", 128), strings.Repeat("a", 127) + "b", "../../etc/passwd", "...", "", "csi.meta",
		"with space", "ünïcode", "-leading", strings.Repeat("x", 65)} {
		for _, f := range []struct {
			derive func(string) string
			max    int
		}{{volumeNameFor, maxDerivedVol}, {snapshotNameFor, maxDerivedSnap}} {
			n := f.derive(in)
			if err := validObjectName(n); err != nil || len(n) > f.max {
				t.Errorf("derive(%q) = %q (%d bytes): %v", in, n, len(n), err)
			}
			if n != f.derive(in) {
				t.Errorf("derive(%q) is not deterministic", in)
			}
			key := n + "/" + string(rune('0'+f.max%10))
			if prev, ok := seen[key]; ok && prev != in {
				t.Errorf("%q and %q both derive %q", prev, in, n)
			}
			seen[key] = in
		}
	}
	// IDs made from derived names stay within 128 bytes.
	id := volumeID{Store: strings.Repeat("s", maxStoreName), Vol: volumeNameFor(strings.Repeat("z", 300))}
	sid := snapshotID{Store: id.Store, Vol: id.Vol, Snap: snapshotNameFor(strings.Repeat("y", 300))}
	if len(sid.String()) > 128 {
		t.Errorf("snapshot ID %q has %d bytes", sid, len(sid.String()))
	}
}
