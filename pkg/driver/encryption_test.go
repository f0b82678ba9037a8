package driver

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

// kek returns a 32-byte key made of b, base64 as a CSI secret holds it, and
// its KEK id.
func kek(b byte) (string, string) {
	var k [seal.KeySize]byte
	for i := range k {
		k[i] = b
	}
	return base64.StdEncoding.EncodeToString(k[:]), seal.Fingerprint(k)
}

func (r *ctrlRig) createWith(name string, size int64, src *csi.VolumeContentSource, params, secrets map[string]string) (*csi.CreateVolumeResponse, error) {
	return r.cs.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: caps(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeContentSource: src, Parameters: params, Secrets: secrets})
}

func (r *ctrlRig) stat(volumeID string) vb.Info {
	r.t.Helper()
	id, err := parseVolumeID(volumeID)
	if err != nil {
		r.t.Fatal(err)
	}
	inf, err := vb.Stat(ctx, r.store, id.Vol)
	if err != nil {
		r.t.Fatal(err)
	}
	return inf
}

// TestCreateVolumeEncrypted: the provisioner secret's encryptionKey makes an
// encrypted volume, compression= a compressed one; retries are idempotent;
// a conflicting retry, a malformed key and clones with the wrong key or of
// a plain source are refused with the right codes.
func TestCreateVolumeEncrypted(t *testing.T) {
	r := newCtrlRig(t)
	key1, id1 := kek(1)
	key2, _ := kek(2)
	sec := map[string]string{SecretEncryptionKey: key1}
	params := map[string]string{ParamCompression: "zstd"}
	resp, err := r.createWith("enc", 8<<20, nil, params, sec)
	if err != nil {
		t.Fatal(err)
	}
	vol := resp.GetVolume().GetVolumeId()
	if inf := r.stat(vol); !inf.Encrypted || inf.KEKID != id1 || inf.Compression != vb.CompressionZstd {
		t.Fatalf("volume: encrypted %v KEK %q compression %q; want true %q zstd", inf.Encrypted, inf.KEKID, id1, inf.Compression)
	}
	if _, err := r.createWith("enc", 8<<20, nil, params, sec); err != nil {
		t.Fatalf("retry: %v", err)
	}
	_, err = r.createWith("enc", 8<<20, nil, params, map[string]string{SecretEncryptionKey: key2})
	wantCode(t, err, codes.AlreadyExists, "encryption")
	_, err = r.createWith("enc", 8<<20, nil, params, nil)
	wantCode(t, err, codes.AlreadyExists, "encryption")
	_, err = r.createWith("enc", 8<<20, nil, map[string]string{ParamCompression: "lz4"}, sec)
	wantCode(t, err, codes.AlreadyExists, "compression")

	_, err = r.createWith("bad", 8<<20, nil, nil, map[string]string{SecretEncryptionKey: "c2hvcnQ="})
	wantCode(t, err, codes.InvalidArgument, SecretEncryptionKey)
	if strings.Contains(err.Error(), "c2hvcnQ") {
		t.Fatalf("the error shows the secret: %v", err)
	}
	_, err = r.createWith("bad", 8<<20, nil, map[string]string{ParamCompression: "gzip"}, nil)
	wantCode(t, err, codes.InvalidArgument, ParamCompression)

	// Clones inherit the source's key: the same KEK is required.
	c, err := r.createWith("enc-clone", 8<<20, volSource(vol), nil, sec)
	if err != nil {
		t.Fatal(err)
	}
	if inf := r.stat(c.GetVolume().GetVolumeId()); !inf.Encrypted || inf.KEKID != id1 {
		t.Fatalf("clone: encrypted %v KEK %q", inf.Encrypted, inf.KEKID)
	}
	_, err = r.createWith("enc-clone2", 8<<20, volSource(vol), nil, map[string]string{SecretEncryptionKey: key2})
	wantCode(t, err, codes.FailedPrecondition, "wrong key")
	_, err = r.createWith("enc-clone3", 8<<20, volSource(vol), nil, nil)
	wantCode(t, err, codes.FailedPrecondition, SecretEncryptionKey)
	snap, err := r.cs.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: vol})
	if err != nil {
		t.Fatal(err)
	}
	sid := snap.GetSnapshot().GetSnapshotId()
	_, err = r.createWith("enc-restore2", 8<<20, snapSource(sid), nil, map[string]string{SecretEncryptionKey: key2})
	wantCode(t, err, codes.FailedPrecondition, "wrong key")
	if _, err := r.createWith("enc-restore", 8<<20, snapSource(sid), nil, sec); err != nil {
		t.Fatal(err)
	}
	plain := r.mustCreate("plain", 8<<20, nil)
	_, err = r.createWith("plain-clone", 8<<20, volSource(plain), nil, sec)
	wantCode(t, err, codes.InvalidArgument, "not encrypted")
}

// TestNodeStageEncrypted: the node-stage secret's encryptionKey opens an
// encrypted volume: it is checked before the server starts (missing or
// wrong: FailedPrecondition, malformed: InvalidArgument), written to the
// volume's state directory for the server alone, and removed at unstage.
func TestNodeStageEncrypted(t *testing.T) {
	r := newNodeRig(t)
	key1, _ := kek(7)
	key2, _ := kek(8)
	k, err := seal.ParseKey([]byte(key1), "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := vb.CreateVolume(ctx, r.store, "sec", 16<<20, vb.CreateOptions{Keys: seal.NewFileSource(k, "test")}); err != nil {
		t.Fatal(err)
	}
	stage := func(secrets map[string]string) error {
		_, err := r.ns.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
			VolumeId: "default/sec", StagingTargetPath: r.staging("sec"), VolumeCapability: mountCapability(snw), Secrets: secrets,
		})
		return err
	}
	wantCode(t, stage(nil), codes.FailedPrecondition, SecretEncryptionKey)
	wantCode(t, stage(map[string]string{SecretEncryptionKey: key2}), codes.FailedPrecondition, "wrong key")
	wantCode(t, stage(map[string]string{SecretEncryptionKey: "not a key"}), codes.InvalidArgument, SecretEncryptionKey)
	if starts := r.sup.starts; starts != 0 {
		t.Fatalf("a server was started %d times for a volume whose key was missing or wrong", starts)
	}
	if err := stage(map[string]string{SecretEncryptionKey: key1}); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(r.dir, "state", "volumes", "default.sec", "encryption.key")
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(keyFile); !bytes.Equal(bytes.TrimSpace(b), []byte(key1)) {
		t.Fatal("the key file does not hold the secret's key")
	}
	r.sup.mu.Lock()
	params := strings.Join(r.sup.lastParams, " ")
	r.sup.mu.Unlock()
	if !strings.Contains(params, "encryption_key_file="+keyFile) {
		t.Fatalf("nbdkit parameters %q do not name the key file", params)
	}
	if r.server("sec") == nil {
		t.Fatal("no server runs for the staged encrypted volume")
	}
	if err := r.unstageEventually("sec"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(keyFile); !os.IsNotExist(err) {
		t.Fatalf("the key file outlived the unstage: %v", err)
	}
}
