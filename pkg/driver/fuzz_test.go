package driver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/credsync"
	"github.com/viperblock/viperblock-csi/pkg/units"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Fuzz targets for the parsers of what callers send the driver: volume and
// snapshot IDs, node IDs, CSI names, StorageClass parameters and the volume
// context, volume capabilities, capacity ranges and CSI secrets; and, at
// the gRPC edge, the codes the controller answers malformed IDs with.

// fzNameOK checks a name the package doc allows in IDs (store, volume or
// snapshot): non-empty, at most max bytes, of [A-Za-z0-9._-] starting with a
// letter or digit, hence no '/', no "." or "..", no control character, and
// local as a path element.
func fzNameOK(t *testing.T, what, s string, max int, dot bool) {
	t.Helper()
	if s == "" || len(s) > max || !isAlnum(s[0]) || !filepath.IsLocal(s) || s == "." || s == ".." {
		t.Fatalf("%s %q accepted", what, s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && !(dot && c == '.') {
			t.Fatalf("%s %q accepted with %q", what, s, c)
		}
	}
}

// fzPlainError checks that a parser's error is a plain error, not a gRPC
// status: the handler decides the code (invalidArg or NotFound), and a
// status inside would be flattened into its message.
func fzPlainError(t *testing.T, err error) {
	t.Helper()
	if _, ok := status.FromError(err); ok {
		t.Fatalf("parser returned a gRPC status: %v", err)
	}
}

// FuzzParseVolumeID checks parseVolumeID: it never panics; what it accepts
// is "<store>/<volume>" with a valid store name and engine name (no second
// '/', no "..", no control character, nothing that leaves a directory as a
// path element), formats back to the same string, and has a node-local key
// ("<store>.<volume>") that cutKey splits back; what it rejects is a plain
// error. A volumeID built from the input's two halves parses back to itself
// exactly when both names are valid.
func FuzzParseVolumeID(f *testing.F) {
	for _, s := range []string{"default/pvc-1", "s3_b-2/a.b_c-d", "x/" + strings.Repeat("v", 128), "x/" + strings.Repeat("v", 129),
		"", "default", "/vol", "default/", "default/..", "default/.", "default/../x", "default/a/b", "../default/a",
		"default/.hidden", "default/-dash", "default/a b", "default/a\x00", "default/a\n", "def.ault/a",
		"toolongstorename-x/a", "default/csi.meta", "default/csi.meta.x", "default/ä", "default/vol@snap"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseVolumeID(s)
		if err != nil {
			fzPlainError(t, err)
		} else {
			fzNameOK(t, "store", id.Store, maxStoreName, false)
			fzNameOK(t, "volume", id.Vol, 128, true)
			if id.Vol == metaPrefix {
				t.Fatalf("reserved name accepted: %q", s)
			}
			if id.String() != s {
				t.Fatalf("%q formats as %q", s, id.String())
			}
			if st, vol, ok := cutKey(id.key()); !ok || st != id.Store || vol != id.Vol {
				t.Fatalf("key %q of %q splits as %q %q %v", id.key(), s, st, vol, ok)
			}
		}
		// From the two halves, as a formatter would get them.
		store, vol, _ := strings.Cut(s, "/")
		v := volumeID{Store: store, Vol: vol}
		got, err := parseVolumeID(v.String())
		valid := validStoreName(store) == nil && validObjectName(vol) == nil
		if valid != (err == nil) || valid && got != v {
			t.Fatalf("%+v: parsed as %+v, %v (names valid: %v)", v, got, err, valid)
		}
		// A directory name in the node's state directory.
		if st, vol, ok := cutKey(s); ok {
			if id, err := parseVolumeID(st + "/" + vol); err == nil && id.key() != s {
				t.Fatalf("directory %q read as volume %v", s, id)
			}
		}
	})
}

// FuzzParseSnapshotID checks parseSnapshotID: it never panics; what it
// accepts is "<store>/<volume>@<snapshot>" of valid names, formats back to
// the same string and names a volume that parseVolumeID accepts; what it
// rejects is a plain error. A snapshotID built from the input's parts
// parses back to itself exactly when its names are valid.
func FuzzParseSnapshotID(f *testing.F) {
	for _, s := range []string{"default/vol@snap-1", "default/pvc-1@snapshot-0f6d5c2e", "default/vol", "default/vol@",
		"default/vol@../x", "default/vol@a@b", "reallyfakesnapshotid", "@x", "default/@x", "default/vol@a/b",
		"default/vol@csi.meta", "default/a@b/c@d", "x/y@" + strings.Repeat("s", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseSnapshotID(s)
		if err != nil {
			fzPlainError(t, err)
		} else {
			fzNameOK(t, "store", id.Store, maxStoreName, false)
			fzNameOK(t, "volume", id.Vol, 128, true)
			fzNameOK(t, "snapshot", id.Snap, 128, true)
			if id.Vol == metaPrefix || id.Snap == metaPrefix {
				t.Fatalf("reserved name accepted: %q", s)
			}
			if id.String() != s {
				t.Fatalf("%q formats as %q", s, id.String())
			}
			if v, err := parseVolumeID(id.volume().String()); err != nil || v != id.volume() {
				t.Fatalf("%q names volume %v: %v", s, v, err)
			}
		}
		v, snap, _ := strings.Cut(s, "@")
		store, vol, _ := strings.Cut(v, "/")
		want := snapshotID{Store: store, Vol: vol, Snap: snap}
		got, err := parseSnapshotID(want.String())
		valid := validStoreName(store) == nil && validObjectName(vol) == nil && validObjectName(snap) == nil
		if valid != (err == nil) || valid && got != want {
			t.Fatalf("%+v: parsed as %+v, %v (names valid: %v)", want, got, err, valid)
		}
	})
}

// FuzzDeriveName checks the names derived from CSI names: always valid
// engine names of at most 64 (volume) or 46 (snapshot) bytes, the same for
// the same input, the name itself when it qualifies, and IDs made of them
// parse and stay within 128 bytes.
func FuzzDeriveName(f *testing.F) {
	for _, s := range []string{"pvc-0f6d5c2e-1a2b-4c3d-8e9f-0123456789ab", "snapshot-0f6d5c2e-1a2b-4c3d-8e9f-0123456789ab",
		strings.Repeat("a", 128), "../../etc/passwd", "...", "", "csi.meta", "with space", "ünïcode", "-leading",
		strings.Repeat("x", 65), "a\x00b", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		vol, snap := volumeNameFor(name), snapshotNameFor(name)
		for _, d := range []struct {
			n   string
			max int
		}{{vol, maxDerivedVol}, {snap, maxDerivedSnap}} {
			fzNameOK(t, "derived name", d.n, d.max, true)
			if d.n == metaPrefix {
				t.Fatalf("%q derives the reserved name", name)
			}
			if len(name) <= d.max && validObjectName(name) == nil && d.n != name {
				t.Fatalf("valid name %q derives %q", name, d.n)
			}
		}
		if vol != volumeNameFor(name) || snap != snapshotNameFor(name) {
			t.Fatalf("derivation of %q is not deterministic", name)
		}
		sid := snapshotID{Store: strings.Repeat("s", maxStoreName), Vol: vol, Snap: snap}
		if got, err := parseSnapshotID(sid.String()); err != nil || got != sid || len(sid.String()) > 128 {
			t.Fatalf("ID %q (%d bytes) from derived names: %v", sid, len(sid.String()), err)
		}
	})
}

// FuzzNodeID checks validNodeID: a node ID it accepts is an engine name (no
// '/', no control character, not the reserved name), its record key is a
// valid store key, and listRecords' parsing of the key gives the ID back.
func FuzzNodeID(f *testing.F) {
	for _, s := range []string{"node-1", "ip-10-0-0-1.ec2.internal", "", "a/b", "..", ".x", "csi.meta", "n\n", strings.Repeat("n", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := validNodeID(s); err != nil {
			fzPlainError(t, err)
			return
		}
		fzNameOK(t, "node ID", s, 128, true)
		if s == metaPrefix {
			t.Fatal("reserved name accepted as node ID")
		}
		k := nodeKey(s)
		if err := backend.ValidateKey(k); err != nil {
			t.Fatalf("node record key %q: %v", k, err)
		}
		if n, ok := strings.CutPrefix(k, metaPrefix+"/nodes/"); !ok || n != s || strings.Contains(n, "/") {
			t.Fatalf("key %q lists as %q", k, n)
		}
	})
}

// fzMap decodes a fuzz string into a map: one "key=value" per line (a line
// without '=' is a key with an empty value).
func fzMap(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		if l == "" {
			continue
		}
		k, v, _ := strings.Cut(l, "=")
		m[k] = v
	}
	return m
}

// fzPluginCache reports whether the nbdkit plugin takes cache=v, by the
// rules of its Config.setCache (cmd/nbdkit-plugin/internal/vbplugin, which
// this package cannot import): N% with N in (0, 90], a positive block
// count, or a size of at least one 4 KiB block.
func fzPluginCache(v string) bool {
	if p, ok := strings.CutSuffix(strings.TrimSpace(v), "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		return err == nil && f > 0 && f <= 90
	}
	if n, err := strconv.Atoi(v); err == nil {
		return n > 0
	}
	n, err := units.Parse(v)
	return err == nil && n >= 4096
}

// fzParamsOK checks parsed parameters: a filesystem the node can make, mkfs
// arguments without white space or NUL, a cache value the plugin takes and
// nothing outside [0-9A-Za-z.%] (it goes on nbdkit's command line), a
// positive drain interval.
func fzParamsOK(t *testing.T, vp volumeParams) {
	t.Helper()
	if vp.FsType != "" && vp.FsType != "ext4" && vp.FsType != "xfs" {
		t.Fatalf("fsType %q", vp.FsType)
	}
	for _, o := range vp.MkfsOptions {
		if o == "" || strings.ContainsFunc(o, func(r rune) bool { return unicode.IsSpace(r) || r == 0 }) {
			t.Fatalf("mkfs option %q", o)
		}
	}
	if vp.Cache != "" {
		if len(vp.Cache) > 32 || strings.ContainsFunc(vp.Cache, func(r rune) bool {
			return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '.' || r == '%')
		}) {
			t.Fatalf("cache %q", vp.Cache)
		}
		if !fzPluginCache(vp.Cache) {
			t.Fatalf("cache %q accepted, which the plugin refuses", vp.Cache)
		}
	}
	if vp.DrainInterval != "" {
		if d, err := time.ParseDuration(vp.DrainInterval); err != nil || d <= 0 {
			t.Fatalf("drainInterval %q", vp.DrainInterval)
		}
	}
}

// FuzzVolumeParams checks parseVolumeParams (StorageClass parameters): it
// never panics; an unknown key (other than csi.storage.k8s.io/...) is an
// error; what it accepts has a valid store name (the parameter's, else the
// default) and values the node can use (fzParamsOK, with a drain interval
// of at most 1h); the volume context made from it reads back on the node
// (parseVolumeContext) and as parameters to the same values.
func FuzzVolumeParams(f *testing.F) {
	for _, s := range []string{
		"store=default\nfsType=xfs\nmkfsOptions=-m 0 -E lazy_itable_init=1\ncache=256MiB\ndrainInterval=5s",
		"fsType=EXT4\ncache=10%\ncsi.storage.k8s.io/fstype=ext4",
		"cache=16384", "cache=0", "cache=100%", "cache=1;rm -rf", "cache=1xyz", "cache=0x1p4", "cache=1e5", "cache=4095",
		"mkfsOptions=a\x00b", "drainInterval=2h", "drainInterval=-1s", "drainInterval=1ns", "fsType=btrfs",
		"store=bad.name", "store=", "bogus=1", "",
	} {
		f.Add(s, "default")
	}
	f.Add("cache=64MiB", "")
	f.Fuzz(func(t *testing.T, enc, defStore string) {
		p := fzMap(enc)
		vp, err := parseVolumeParams(p, defStore)
		if err != nil {
			fzPlainError(t, err)
			return
		}
		for k := range p {
			switch {
			case strings.HasPrefix(k, k8sParamPrefix):
			case k == ParamStore, k == ParamFsType, k == ParamMkfsOptions, k == ParamCache, k == ParamDrainInterval:
			default:
				t.Fatalf("unknown parameter %q accepted", k)
			}
		}
		want := defStore
		if s, ok := p[ParamStore]; ok {
			want = s
		}
		if vp.Store != want {
			t.Fatalf("store %q, want %q", vp.Store, want)
		}
		fzNameOK(t, "store", vp.Store, maxStoreName, false)
		fzParamsOK(t, vp)
		if vp.DrainInterval != "" {
			if d, _ := time.ParseDuration(vp.DrainInterval); d > time.Hour {
				t.Fatalf("drainInterval %q", vp.DrainInterval)
			}
		}
		c := vp.context()
		back, err := parseVolumeContext(c)
		if err != nil {
			t.Fatalf("context %v of %+v rejected on the node: %v", c, vp, err)
		}
		back.Store = vp.Store
		if !fzSameParams(back, vp) {
			t.Fatalf("context %v reads back as %+v, want %+v", c, back, vp)
		}
		again, err := parseVolumeParams(c, "")
		if err != nil || !fzSameParams(again, vp) {
			t.Fatalf("context %v as parameters: %+v %v, want %+v", c, again, err, vp)
		}
	})
}

func fzSameParams(a, b volumeParams) bool {
	return a.Store == b.Store && a.FsType == b.FsType && slices.Equal(a.MkfsOptions, b.MkfsOptions) &&
		a.Cache == b.Cache && a.DrainInterval == b.DrainInterval
}

// FuzzVolumeContext checks parseVolumeContext (the volume context on the
// node, which a hand-made PersistentVolume sets freely): it never panics,
// ignores keys it does not know, and accepts only values the node can use
// (fzParamsOK); whatever it accepts, the controller accepts as parameters
// too, but for the bound on the drain interval the node does not enforce.
func FuzzVolumeContext(f *testing.F) {
	for _, s := range []string{
		"store=default\nfsType=ext4\nmkfsOptions=-m 0\ncache=10%\ndrainInterval=5s",
		"fsType=\ncache=\ndrainInterval=", "storage.kubernetes.io/csiProvisionerIdentity=1-2-csi.viperblock.io",
		"mkfsOptions=-O\x00^has_journal", "mkfsOptions=\t \n", "cache=0", "cache=91%", "cache=%", "cache=.", "drainInterval=0s",
		"fsType=ntfs", "drainInterval=1000h",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, enc string) {
		c := fzMap(enc)
		vp, err := parseVolumeContext(c)
		if err != nil {
			fzPlainError(t, err)
			return
		}
		fzParamsOK(t, vp)
		params := map[string]string{ParamStore: "default"}
		for _, k := range []string{ParamFsType, ParamMkfsOptions, ParamCache} {
			if v := c[k]; v != "" {
				params[k] = v
			}
		}
		if _, err := parseVolumeParams(params, ""); err != nil {
			t.Fatalf("context %v accepted on the node, refused as parameters: %v", c, err)
		}
	})
}

// FuzzCheckCapability checks checkCapability on capabilities built from the
// input: it accepts exactly the single-node access modes with a block or a
// mount access type, and MULTI_NODE_MULTI_WRITER with block, a mount only with ext4, xfs (any case) or no
// filesystem and without volume_mount_group; what it accepts says block or
// mount, the mode, and read-only exactly for SINGLE_NODE_READER_ONLY.
func FuzzCheckCapability(f *testing.F) {
	for mode := int32(-1); mode <= 8; mode++ {
		f.Add(mode, uint8(2), "ext4", "noatime,discard", "")
	}
	f.Add(int32(1), uint8(1), "", "", "")
	f.Add(int32(7), uint8(2), "XFS", "", "")
	f.Add(int32(1), uint8(2), "btrfs", "", "")
	f.Add(int32(1), uint8(2), "", "", "1000")
	f.Add(int32(1), uint8(0), "", "", "")
	f.Add(int32(1), uint8(3), "", "", "")
	f.Add(int32(1), uint8(4), "", "", "")
	if err := checkCapabilities(nil); err == nil {
		f.Fatal("no capabilities accepted")
	}
	f.Fuzz(func(t *testing.T, mode int32, kind uint8, fsType, flags, group string) {
		c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_Mode(mode)}}
		var mountFlags []string
		if flags != "" {
			mountFlags = strings.Split(flags, ",")
		}
		switch kind % 5 {
		case 1:
			c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		case 2:
			c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: mountFlags, VolumeMountGroup: group}}
		case 3:
			c = nil
		case 4:
			c.AccessMode = nil
			c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}
		a, err := checkCapability(c)
		m := csi.VolumeCapability_AccessMode_Mode(mode)
		singleNode := m == csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER || m == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER ||
			m == csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER || m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
		fsOK := fsType == "" || strings.ToLower(fsType) == "ext4" || strings.ToLower(fsType) == "xfs"
		migratable := m == csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER && kind%5 == 1
		valid := singleNode && (kind%5 == 1 || kind%5 == 2 && fsOK && group == "") || migratable
		if valid != (err == nil) {
			t.Fatalf("capability %v: %+v %v, want valid=%v", c, a, err, valid)
		}
		if errs := checkCapabilities([]*csi.VolumeCapability{c}); (errs == nil) != valid {
			t.Fatalf("checkCapabilities(%v) = %v", c, errs)
		}
		if err != nil {
			fzPlainError(t, err)
			return
		}
		if a.Mode != m || a.Block != (kind%5 == 1) || a.readOnly() != (m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY) {
			t.Fatalf("capability %v read as %+v", c, a)
		}
		if a.Block && (a.FsType != "" || a.MountFlags != nil) || !a.Block && !slices.Equal(a.MountFlags, mountFlags) {
			t.Fatalf("capability %v read as %+v", c, a)
		}
		if want, _ := checkFsType(fsType); !a.Block && fsType != "" && a.FsType != want {
			t.Fatalf("fsType %q read as %q", fsType, a.FsType)
		}
	})
}

// FuzzRequestedSize checks requestedSize (CreateVolume's and
// ControllerExpandVolume's capacity range): it never panics; it refuses a
// range with InvalidArgument (malformed) or OutOfRange (no size fits),
// never with another code; a size it returns is a whole number of 4 KiB
// blocks within the range, at most 1 PiB, and positive unless neither a
// size nor a default was given.
func FuzzRequestedSize(f *testing.F) {
	for _, c := range [][3]int64{
		{0, 0, 1 << 30}, {10<<20 + 1, 0, 1 << 30}, {0, 4096, 1 << 30}, {1, 4095, 1 << 30}, {5000, 8191, 1 << 30},
		{-1, 0, 1 << 30}, {0, -1, 1 << 30}, {10, 5, 1 << 30}, {1 << 50, 0, 1 << 30}, {1<<50 + 1, 0, 1 << 30},
		{0, 0, 0}, {1<<63 - 1, 0, 1 << 30}, {1<<63 - 4096, 1<<63 - 1, 1 << 30}, {0, 1<<63 - 1, 1<<63 - 1},
	} {
		f.Add(c[0], c[1], c[2])
	}
	f.Fuzz(func(t *testing.T, req, lim, def int64) {
		if def < 0 {
			def = -(def + 1) // callers pass 0 or a validated default
		}
		r := &csi.CapacityRange{RequiredBytes: req, LimitBytes: lim}
		size, err := requestedSize(r, def)
		if err != nil {
			if c := status.Code(err); c != codes.InvalidArgument && c != codes.OutOfRange {
				t.Fatalf("%v (default %d): code %s: %v", r, def, c, err)
			}
			return
		}
		if size < 0 || size%vb.BlockSize != 0 || size > maxVolumeSize || !fits(size, r) || size == 0 && (req != 0 || def != 0) {
			t.Fatalf("%v (default %d): size %d", r, def, size)
		}
	})
}

// fzSecretStatic is every text a credentials error may hold besides secret
// key names: no secret value may appear in an error.
const fzSecretStatic = "invalid secret: secret key  is empty or has a line break\n" +
	"invalid secret: secret  is given under two names with different values\n" +
	"invalid secret: secrets need both  and "

// fzReadCredentials reads an env-style credentials file as the S3 store
// does (pkg/viperblock/backend/s3: parseCredentials, documented in its
// package doc): blank and '#' lines skipped, an "export " prefix and white
// space around key and value dropped, matching quotes around the value
// stripped.
func fzReadCredentials(b []byte) (map[string]string, error) {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' {
			continue
		}
		l = strings.TrimPrefix(l, "export ")
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return nil, errors.New("expected KEY=VALUE")
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		m[k] = v
	}
	return m, sc.Err()
}

// FuzzCredentials checks credentials (CSI secrets to the S3 store's
// credentials file): it never panics; it refuses with errInvalidSecret
// (InvalidArgument) and never repeats a secret value in the error; its
// result does not depend on map order; a file it writes reads back, as the
// S3 store reads it, to exactly the values given.
func FuzzCredentials(f *testing.F) {
	for _, s := range []string{
		"awsAccessKeyID=AKID\nawsSecretAccessKey=SECRET/with+chars",
		"AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_ACCESS_KEY=s\nAWS_SESSION_TOKEN=tok==",
		"awsAccessKeyID=AKID\nAWS_ACCESS_KEY_ID=OTHER\nawsSecretAccessKey=s",
		"awsAccessKeyID=AKID\nAWS_ACCESS_KEY_ID=AKID\nawsSecretAccessKey=s",
		"awsAccessKeyID=AKID\nawsSecretAccessKey= padded ", "awsAccessKeyID=AKID\nawsSecretAccessKey='quoted'",
		"awsAccessKeyID=AKID\nawsSecretAccessKey=\"x\"", "awsAccessKeyID=AKID\nawsSecretAccessKey=#x=y",
		"awsAccessKeyID=AKID\nawsSecretAccessKey=a\rb", "awsAccessKeyID=AKID", "awsSessionToken=t", "other=x", "",
		"awsAccessKeyID=\nawsSecretAccessKey=s",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, enc string) {
		secrets := fzMap(enc)
		b, err := credentials(secrets)
		for i := 0; i < 4; i++ {
			b2, err2 := credentials(secrets)
			if !bytes.Equal(b, b2) || (err == nil) != (err2 == nil) {
				t.Fatalf("%q: results differ between calls: %q %v / %q %v", enc, b, err, b2, err2)
			}
		}
		if err != nil {
			if !errors.Is(err, errInvalidSecret) || codeOf(err) != codes.InvalidArgument {
				t.Fatalf("error %v (code %s)", err, codeOf(err))
			}
			msg := err.Error()
			for _, k := range allSecretKeys {
				msg = strings.ReplaceAll(msg, k, "")
			}
			for k, v := range secrets {
				if _, _, known := credsync.CanonicalKey(k); known && v != "" && strings.Contains(msg, v) && !strings.Contains(fzSecretStatic, v) {
					t.Fatalf("error %q repeats the value of %s", err, k)
				}
			}
			return
		}
		want := map[string]string{}
		for k, v := range secrets {
			if env, _, ok := credsync.CanonicalKey(k); ok {
				if w, dup := want[env]; dup && w != v {
					t.Fatalf("%s given twice with different values, accepted", env)
				}
				want[env] = v
			}
		}
		if len(want) == 0 {
			if b != nil {
				t.Fatalf("credentials %q from no secret", b)
			}
			return
		}
		if bytes.ContainsAny(b, "\r\x00") || len(b) > 0 && b[len(b)-1] != '\n' {
			t.Fatalf("credentials file %q", b)
		}
		if len(b) > bufio.MaxScanTokenSize {
			return // a line too long for the reader fails there, loudly
		}
		got, err := fzReadCredentials(b)
		if err != nil || !maps.Equal(got, want) {
			t.Fatalf("credentials file %q reads as %q %v, want %q", b, got, err, want)
		}
	})
}

// fzQuietKlog silences klog (the handlers log malformed IDs) until the
// fuzz target ends.
func fzQuietKlog(f *testing.F) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("logtostderr", "false")
	fs.Set("alsologtostderr", "false")
	fs.Set("stderrthreshold", "FATAL")
	klog.SetOutput(io.Discard)
	f.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(nil)
		fs.Set("logtostderr", "true")
		fs.Set("stderrthreshold", "ERROR")
	})
}

// FuzzControllerIDs sends volume, snapshot and node IDs to the controller's
// RPCs, against an empty in-memory store, and checks the codes: a missing
// ID is InvalidArgument; a malformed volume or snapshot ID, or node ID, is
// NotFound where the object is looked up, success where it is deleted or
// unpublished (it cannot exist), Aborted as a starting_token; a
// well-formed one of an object that does not exist gets NotFound or
// success in the same places (InvalidArgument for a clone source in another
// store). No RPC answers Internal or Unknown.
func FuzzControllerIDs(f *testing.F) {
	for _, s := range [][3]string{
		{"default/pvc-1", "default/pvc-1@snap-1", "node-1"},
		{"default/../x", "default/vol@../x", "a/b"},
		{"nostore/pvc-1", "nostore/v@s", "csi.meta"},
		{"", "", ""},
		{"default/csi.meta", "default/csi.meta@x", "n\x00"},
		{"other/v", "other/v@s", strings.Repeat("n", 200)},
	} {
		f.Add(s[0], s[1], s[2])
	}
	fzQuietKlog(f)
	opts := &Options{Stores: Stores{"default": "mem://a", "other": "mem://b"}, DefaultStore: "default", OwnerWait: time.Second, NodeCheck: "store"}
	stores := map[string]backend.Store{"mem://a": backend.NewMem(), "mem://b": backend.NewMem()}
	cs, err := NewControllerServer(opts, StoreNodeChecker{}, func(_ context.Context, u string) (backend.Store, error) { return stores[u], nil })
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(cs.Close)
	bg := context.Background()
	vc := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}

	f.Fuzz(func(t *testing.T, volID, snapID, nodeID string) {
		_, volErr := parseVolumeID(volID)
		_, snapErr := parseSnapshotID(snapID)
		nodeErr := validNodeID(nodeID)
		// check asserts the code of one call: InvalidArgument for an
		// empty ID, else malformed (when bad) or wellFormed.
		check := func(rpc string, err error, id string, bad bool, malformed codes.Code, wellFormed ...codes.Code) {
			t.Helper()
			c := status.Code(err)
			switch {
			case id == "":
				if c != codes.InvalidArgument {
					t.Fatalf("%s(%q): code %s, want InvalidArgument: %v", rpc, id, c, err)
				}
			case bad:
				if c != malformed {
					t.Fatalf("%s(%q): code %s, want %s: %v", rpc, id, c, malformed, err)
				}
			case !slices.Contains(wellFormed, c):
				t.Fatalf("%s(%q): code %s, want one of %v: %v", rpc, id, c, wellFormed, err)
			}
		}
		bad := volErr != nil

		_, err := cs.ControllerGetVolume(bg, &csi.ControllerGetVolumeRequest{VolumeId: volID})
		check("ControllerGetVolume", err, volID, bad, codes.NotFound, codes.NotFound)
		_, err = cs.ValidateVolumeCapabilities(bg, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: volID, VolumeCapabilities: []*csi.VolumeCapability{vc}})
		check("ValidateVolumeCapabilities", err, volID, bad, codes.NotFound, codes.NotFound)
		_, err = cs.ControllerExpandVolume(bg, &csi.ControllerExpandVolumeRequest{VolumeId: volID, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}})
		check("ControllerExpandVolume", err, volID, bad, codes.NotFound, codes.NotFound)
		_, err = cs.DeleteVolume(bg, &csi.DeleteVolumeRequest{VolumeId: volID})
		check("DeleteVolume", err, volID, bad, codes.OK, codes.OK)
		_, err = cs.ControllerUnpublishVolume(bg, &csi.ControllerUnpublishVolumeRequest{VolumeId: volID, NodeId: nodeID})
		check("ControllerUnpublishVolume", err, volID, bad, codes.OK, codes.OK)
		_, err = cs.CreateSnapshot(bg, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: volID})
		check("CreateSnapshot", err, volID, bad, codes.NotFound, codes.NotFound)
		if volID != "" && nodeID != "" {
			_, err = cs.ControllerPublishVolume(bg, &csi.ControllerPublishVolumeRequest{VolumeId: volID, NodeId: nodeID, VolumeCapability: vc})
			check("ControllerPublishVolume", err, volID, bad || nodeErr != nil, codes.NotFound, codes.NotFound)
		}

		bad = snapErr != nil
		_, err = cs.DeleteSnapshot(bg, &csi.DeleteSnapshotRequest{SnapshotId: snapID})
		check("DeleteSnapshot", err, snapID, bad, codes.OK, codes.OK)
		_, err = cs.CreateVolume(bg, &csi.CreateVolumeRequest{Name: "pvc-fuzz", VolumeCapabilities: []*csi.VolumeCapability{vc},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}}})
		if snapID == "" { // not a missing field: a source naming no snapshot
			if c := status.Code(err); c != codes.NotFound {
				t.Fatalf("CreateVolume from snapshot \"\": code %s, want NotFound: %v", c, err)
			}
		} else {
			check("CreateVolume from snapshot", err, snapID, bad, codes.NotFound, codes.NotFound, codes.InvalidArgument)
		}
		resp, err := cs.ListSnapshots(bg, &csi.ListSnapshotsRequest{SnapshotId: snapID})
		if err != nil || len(resp.GetEntries()) != 0 {
			t.Fatalf("ListSnapshots(snapshot_id=%q): %v %v", snapID, resp, err)
		}
		if snapID != "" {
			_, err = cs.ListSnapshots(bg, &csi.ListSnapshotsRequest{StartingToken: snapID})
			check("ListSnapshots(starting_token)", err, snapID, bad, codes.Aborted, codes.OK)
		}
		if volID != "" {
			_, err = cs.ListVolumes(bg, &csi.ListVolumesRequest{StartingToken: volID})
			check("ListVolumes(starting_token)", err, volID, volErr != nil, codes.Aborted, codes.OK)
		}
	})
}

// allSecretKeys are every spelling of the credential keys CSI secrets
// accept.
var allSecretKeys = []string{credsync.AccessKeyID, credsync.SecretAccessKey, credsync.SessionToken,
	"awsAccessKeyID", "awsSecretAccessKey", "awsSessionToken",
	"accessKeyID", "secretAccessKey", "sessionToken"}
