package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/version"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// decode wants exactly one JSON document on stdout, decoded strictly into
// v (an unknown field is an error, so the test sees every field the
// command prints).
func decode(t *testing.T, r result, v any) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %q: %v", r.stdout, err)
	}
	if dec.More() {
		t.Fatalf("more than one JSON document on stdout: %q", r.stdout)
	}
}

// Every command that reports prints one JSON document with --json, and
// nothing else on stdout.
func TestJSONOutput(t *testing.T) {
	dir := t.TempDir()

	var created createReport
	decode(t, vblock(t, dir, "create", "v1", "--size", "10000", "--durability", "store", "--json"), &created)
	if created != (createReport{Name: "v1", Size: 12288, Durability: vb.DurabilityStore, Compression: vb.CompressionNone}) {
		t.Errorf("create --json = %+v", created)
	}

	img := filepath.Join(dir, "img")
	data := bytes.Repeat([]byte("viperblock"), 1<<17) // 1.25 MiB of data
	if err := os.WriteFile(img, append(data, make([]byte, 1<<20)...), 0o644); err != nil {
		t.Fatal(err)
	}
	var imp imageReport
	decode(t, vblock(t, dir, "import", "v2", img, "--json"), &imp)
	if imp.Volume != "v2" || !imp.Created || imp.Bytes != int64(len(data))+1<<20 || imp.DataBytes < int64(len(data)) || imp.DataBytes >= imp.Bytes {
		t.Errorf("import --json = %+v", imp)
	}

	var infos []vb.Info
	decode(t, vblock(t, dir, "list", "--json"), &infos)
	if len(infos) != 2 || infos[0].Name != "v1" || infos[1].Name != "v2" {
		t.Errorf("list --json = %+v", infos)
	}

	var snap vb.SnapshotInfo
	decode(t, vblock(t, dir, "snapshot", "create", "v2", "s1", "--json"), &snap)
	if snap.Volume != "v2" || snap.Name != "s1" || snap.Size != imp.Bytes {
		t.Errorf("snapshot create --json = %+v", snap)
	}
	var snaps []vb.SnapshotInfo
	decode(t, vblock(t, dir, "snapshot", "list", "v2", "--json"), &snaps)
	if len(snaps) != 1 || snaps[0].Name != "s1" {
		t.Errorf("snapshot list --json = %+v", snaps)
	}

	var cl cloneReport
	decode(t, vblock(t, dir, "clone", "v2@s1", "c1", "--json"), &cl)
	if cl.Source != "v2@s1" || cl.Volume.Name != "c1" || cl.Volume.Parent != "v2@s1" || cl.Volume.Size != imp.Bytes {
		t.Errorf("clone --json = %+v", cl)
	}

	var ins struct {
		vb.Info
		LocalWAL          *walUsage
		Space             vb.SpaceInfo
		StoredToLiveRatio float64
		CompressionRatio  float64
	}
	decode(t, vblock(t, dir, "inspect", "v2", "--json"), &ins)
	if ins.Name != "v2" || len(ins.Snapshots) != 1 || ins.WrittenBytes < int64(len(data)) ||
		ins.Space.LiveBytes < int64(len(data)) || ins.Space.StoredBytes < ins.Space.LiveBytes || ins.StoredToLiveRatio < 1 {
		t.Errorf("inspect --json = %+v", ins)
	}

	var fs fsckJSON
	decode(t, vblock(t, dir, "fsck", "v2", "--json"), &fs)
	if fs.Volume != "v2" || !fs.OK || fs.Snapshots != 1 || fs.ChunksReferenced == 0 || fs.ChunksVerified != fs.ChunksReferenced || fs.BytesRead == 0 || len(fs.Problems) != 0 {
		t.Errorf("fsck --json = %+v", fs)
	}

	out := filepath.Join(dir, "out")
	var exp imageReport
	decode(t, vblock(t, dir, "export", "v2", out, "--json"), &exp)
	if exp.Volume != "v2" || exp.File != out || exp.Bytes != imp.Bytes || exp.DataBytes < int64(len(data)) {
		t.Errorf("export --json = %+v", exp)
	}
	if r := vblock(t, dir, "export", "v2", "-", "--json"); r.code != exitUsage || r.stdout != "" {
		t.Errorf("export to stdout with --json: %+v", r)
	}

	var diff snapshotDiffReport
	if r := vblock(t, dir, "snapshot", "create", "v2", "s2"); r.code != 0 || strings.HasPrefix(r.stdout, "{") {
		t.Fatalf("snapshot create without --json: %+v", r)
	}
	decode(t, vblock(t, dir, "snapshot", "diff", "v2", "s1", "s2", "--json"), &diff)
	if diff.Volume != "v2" || diff.From != "s1" || diff.To != "s2" || len(diff.Ranges) != 0 || diff.Bytes != 0 {
		t.Errorf("snapshot diff --json = %+v", diff)
	}

	var gc gcReport
	decode(t, vblock(t, dir, "gc", "v2", "--json"), &gc)
	if gc.Name != "v2" || gc.By != "collect" || gc.ChunksAfter > gc.ChunksBefore || gc.ChunksBefore == 0 {
		t.Errorf("gc --json = %+v", gc)
	}

	var sd snapshotDeleteReport
	decode(t, vblock(t, dir, "snapshot", "delete", "v2", "s1", "--json"), &sd)
	if !sd.Deleted || sd.Volume != "v2" || sd.Snapshot != "s1" || len(sd.Dependants) != 1 || sd.Dependants[0] != "c1" {
		t.Errorf("snapshot delete --json = %+v", sd)
	}

	var del deleteReport
	decode(t, vblock(t, dir, "delete", "v1", "--json"), &del)
	if del != (deleteReport{Name: "v1", Deleted: true}) {
		t.Errorf("delete --json = %+v", del)
	}

	var sc storeCheckReport
	decode(t, vblock(t, dir, "store", "check", "--json"), &sc)
	if !sc.OK || !sc.CheckReport.OK() || sc.Prefix == "" || !strings.HasPrefix(sc.Store, "file://") {
		t.Errorf("store check --json = %+v", sc)
	}

	var v version.Info
	decode(t, vblock(t, dir, "version", "--json"), &v)
	if v.Version == "" || v.GoVersion == "" {
		t.Errorf("version --json = %+v", v)
	}
}

// With --json an error is still reported on stderr with its exit status,
// and stdout stays empty, except fsck: a corrupt volume's report is
// printed, then exit 3.
func TestJSONErrors(t *testing.T) {
	dir := t.TempDir()
	if r := vblock(t, dir, "inspect", "nope", "--json"); r.code != exitFail || r.stdout != "" || !strings.Contains(r.stderr, "not found") {
		t.Errorf("inspect of a missing volume: %+v", r)
	}
	if r := vblock(t, dir, "create", "v", "--size", "1MiB"); r.code != 0 {
		t.Fatal(r)
	}
	if r := vblock(t, dir, "create", "v", "--size", "1MiB", "--json"); r.code != exitFail || r.stdout != "" {
		t.Errorf("create twice: %+v", r)
	}
	// Damage the manifest: fsck --json reports the problem and exits 3.
	man := filepath.Join(dir, "store", "v", "manifest")
	b, err := os.ReadFile(man)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(man, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r := vblock(t, dir, "fsck", "v", "--json")
	if r.code != exitCorrupt {
		t.Fatalf("fsck of a damaged volume: %+v", r)
	}
	var fs fsckJSON
	r.code = 0
	decode(t, r, &fs)
	if fs.OK || len(fs.Problems) == 0 || !strings.Contains(fs.Problems[0], "corrupt") || fs.Rebuild != nil {
		t.Errorf("fsck --json = %+v", fs)
	}
	// --rebuild: the rebuild's report and the check's, in one document.
	var rb fsckJSON
	decode(t, vblock(t, dir, "fsck", "v", "--rebuild", "--size", "1MiB", "--json"), &rb)
	if !rb.OK || rb.Rebuild == nil || rb.Rebuild.Volume != "v" || rb.Rebuild.Size != 1<<20 || rb.Manifest == nil || rb.Manifest.Size != 1<<20 {
		t.Errorf("fsck --rebuild --json = %+v (rebuild %+v)", rb, rb.Rebuild)
	}
}

// A store that ignores If-Match fails `vblock store check`: exit 1, the
// failing check named on stderr, the report on stdout.
func TestStoreCheckRefuses(t *testing.T) {
	backend.Register("careless-test", func(_ context.Context, _ *url.URL) (backend.Store, error) {
		return carelessStore{backend.NewMem()}, nil
	})
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"store", "check", "careless-test://x"}, &out, &errb, func(string) string { return "" })
	if code != exitFail || !strings.Contains(errb.String(), backend.CheckIfMatchStale) || !strings.Contains(errb.String(), "cannot hold volumes") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	if !regexp.MustCompile(`(?m)^` + backend.CheckIfMatchStale + ` +FAILED `).MatchString(out.String()) {
		t.Errorf("report lacks the failed check:\n%s", out.String())
	}
	out.Reset()
	errb.Reset()
	code = run(context.Background(), []string{"store", "check", "--json", "careless-test://x"}, &out, &errb, func(string) string { return "" })
	var rep storeCheckReport
	decode(t, result{0, out.String(), ""}, &rep)
	if code != exitFail || rep.OK || rep.Failed() == nil || rep.Failed().Name != backend.CheckIfMatchStale {
		t.Errorf("--json: exit %d, report %+v", code, rep)
	}
}

// carelessStore applies a PutIf with If-Match unconditionally.
type carelessStore struct{ *backend.Mem }

func (s carelessStore) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	if v == "" {
		return s.Mem.PutIf(ctx, key, data, v)
	}
	if err := s.Mem.Put(ctx, key, data); err != nil {
		return "", err
	}
	_, nv, err := s.Mem.Get(ctx, key)
	return nv, err
}
