// Package sanity runs the CSI sanity suite (kubernetes-csi/csi-test v5)
// in-process against the real controller and node services: the real
// engine on a file store and on S3 (versitygw on 127.0.0.1), real nbdkit
// with the viperblock plugin, real attachment through nbdfuse and a loop
// device, real mkfs and mount. It needs root, /dev/fuse, nbdkit, nbdfuse,
// losetup and mkfs.ext4; the plugin is built from this checkout
// (testutil.Plugin).
package sanity

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/internal/testutil/s3server"
	"github.com/viperblock/viperblock-csi/pkg/attach"
	"github.com/viperblock/viperblock-csi/pkg/driver"
	_ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

// pluginStores returns the store schemes the plugin links ("file,mem,s3").
func pluginStores(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("nbdkit", "--dump-plugin", testutil.Plugin(t)).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdkit --dump-plugin: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "viperblock_stores="); ok {
			return v
		}
	}
	return ""
}

// needNodeTools skips (or fails, under VB_REQUIRE) unless this machine
// can stage volumes for real: root and /dev/fuse. A missing tool fails the
// test.
func needNodeTools(t testing.TB) {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedPath(t, "/dev/fuse")
	for _, tool := range []string{"nbdkit", "nbdfuse", "fusermount3", "losetup", "blockdev", "mkfs.ext4", "mkfs.xfs", "resize2fs", "xfs_growfs", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (make deps installs it)", tool)
		}
	}
}

// rig is one driver (controller + node on one socket) over one store.
type rig struct {
	name     string
	dir      string
	socket   string
	opts     *driver.Options
	srv      *driver.Server
	cs       *driver.ControllerServer
	ns       *driver.NodeServer
	att      attach.Attacher
	secrets  map[string]string
	stateDir string
}

// newRig starts a driver with store storeName=url under dir.
func newRig(t testing.TB, storeName, url, dir string, secrets map[string]string) *rig {
	t.Helper()
	r := &rig{name: storeName, dir: dir, socket: filepath.Join(dir, "csi.sock"), secrets: secrets, stateDir: filepath.Join(dir, "state")}
	r.opts = &driver.Options{
		DriverName: driver.DefaultDriverName, Stores: driver.Stores{storeName: url},
		NodeID: "sanity-node-" + storeName, StateDir: r.stateDir, WALDir: filepath.Join(dir, "wal"),
		Nbdkit: "nbdkit", Plugin: testutil.Plugin(t), OwnerWait: 20 * time.Second, VirtualSize: -1,
	}
	var err error
	r.cs, err = driver.NewControllerServer(r.opts, driver.StoreNodeChecker{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.att, err = attach.New(attach.KindNbdfuse, attach.Options{StateDir: filepath.Join(dir, "attach")})
	if err != nil {
		t.Fatal(err)
	}
	r.ns, err = driver.NewNodeServer(r.opts, driver.NodeDeps{Attacher: r.att})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r.ns.Register(ctx)
	r.srv, err = driver.NewServer("unix://"+r.socket, r.opts, driver.Services{Controller: r.cs, Node: r.ns}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go r.srv.Serve()
	return r
}

// close unstages whatever is still staged, then stops everything.
func (r *rig) close(t testing.TB) {
	conn, err := grpc.NewClient("unix://"+r.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err == nil {
		node := csi.NewNodeClient(conn)
		vols, _ := filepath.Glob(filepath.Join(r.stateDir, "volumes", "*", "state.json"))
		for _, p := range vols {
			b, _ := os.ReadFile(p)
			var id, staging string
			fmt.Sscanf(extract(string(b), "volumeID"), "%s", &id)
			staging = extract(string(b), "stagingPath")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
				t.Errorf("cleanup: unstage %s: %v", id, err)
			}
			cancel()
		}
		conn.Close()
	}
	r.srv.Stop()
	r.ns.Close()
	r.cs.Close()
}

// extract pulls a string field out of a state file without depending on
// the driver's internal types.
func extract(js, field string) string {
	i := strings.Index(js, `"`+field+`": "`)
	if i < 0 {
		return ""
	}
	s := js[i+len(field)+5:]
	if j := strings.IndexByte(s, '"'); j >= 0 {
		return s[:j]
	}
	return ""
}

// config is the sanity configuration for a rig.
func (r *rig) config() *sanity.TestConfig {
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + r.socket
	cfg.TargetPath = filepath.Join(r.dir, "target")
	cfg.StagingPath = filepath.Join(r.dir, "staging")
	cfg.TestVolumeSize = 256 << 20
	cfg.TestVolumeExpandSize = 512 << 20
	cfg.TestVolumeParameters = map[string]string{driver.ParamStore: r.name}
	cfg.IdempotentCount = 5
	if r.secrets != nil {
		f := filepath.Join(r.dir, "secrets.yaml")
		var b strings.Builder
		for _, k := range []string{"CreateVolumeSecret", "DeleteVolumeSecret", "ControllerPublishVolumeSecret", "ControllerUnpublishVolumeSecret",
			"ControllerValidateVolumeCapabilitiesSecret", "NodeStageVolumeSecret", "NodePublishVolumeSecret", "CreateSnapshotSecret",
			"DeleteSnapshotSecret", "ControllerExpandVolumeSecret", "ListSnapshotsSecret", "GetSnapshotSecret"} {
			fmt.Fprintf(&b, "%s:\n", k)
			for sk, sv := range r.secrets {
				fmt.Fprintf(&b, "  %s: %q\n", sk, sv)
			}
		}
		if err := os.WriteFile(f, []byte(b.String()), 0o600); err != nil {
			panic(err)
		}
		cfg.SecretsFile = f
	}
	return &cfg
}

// TestSanity runs the whole csi-sanity suite twice in one Ginkgo run: on
// a file store and on S3 (versitygw, credentials passed as CSI secrets).
func TestSanity(t *testing.T) {
	if testing.Short() {
		t.Skip("csi-sanity stages real volumes; skipped with -short")
	}
	needNodeTools(t)
	base := t.TempDir()

	// File store.
	fdir := filepath.Join(base, "file")
	os.MkdirAll(filepath.Join(fdir, "store"), 0o700)
	fileRig := newRig(t, "file", "file://"+filepath.Join(fdir, "store"), fdir, nil)
	defer fileRig.close(t)

	fileCfg := fileRig.config()
	var _ = Describe("file store", func() { sanity.GinkgoTest(fileCfg); paginationSpecs(fileCfg) })

	// S3: every call carries the credentials as CSI secrets (the node
	// passes them to nbdkit in a credentials file); the calls that have
	// no secrets (ListVolumes, GetCapacity) use the store URL's own.
	// A plugin without the s3 store (another build, through VB_PLUGIN)
	// shows as a skipped subtest, a failure under VB_REQUIRE; the file
	// store's run goes on.
	if stores := pluginStores(t); !strings.Contains(","+stores+",", ",s3,") {
		t.Run("s3", func(t *testing.T) {
			testutil.Skip(t, "s3-store", "the nbdkit plugin serves only %q stores: the S3 sanity run needs the plugin built with the s3 store", stores)
		})
	} else {
		srv := s3server.Start(t)
		sdir := filepath.Join(base, "s3")
		os.MkdirAll(sdir, 0o700)
		s3Rig := newRig(t, "s3", srv.URL("sanity"), sdir, map[string]string{
			"AWS_ACCESS_KEY_ID": srv.AccessKey, "AWS_SECRET_ACCESS_KEY": srv.SecretKey,
		})
		defer s3Rig.close(t)
		s3Cfg := s3Rig.config()
		var _ = Describe("s3 store", func() { sanity.GinkgoTest(s3Cfg); paginationSpecs(s3Cfg) })
	}
	var skipped []string
	counts := map[types.SpecState]int{}
	ReportAfterSuite("skipped specs", func(rep Report) {
		for _, s := range rep.SpecReports {
			if s.LeafNodeType != types.NodeTypeIt {
				continue
			}
			counts[s.State]++
			if s.State == types.SpecStateSkipped || s.State == types.SpecStatePending {
				skipped = append(skipped, fmt.Sprintf("%s [%s]: %s", s.FullText(), s.State, s.Failure.Message))
			}
		}
	})
	RegisterFailHandler(Fail)
	suite, reporter := GinkgoConfiguration()
	suite.Timeout = 30 * time.Minute
	reporter.Succinct = true
	RunSpecs(t, "Viperblock CSI sanity", suite, reporter)
	sort.Strings(skipped)
	t.Logf("sanity: %d passed, %d failed, %d skipped, %d pending", counts[types.SpecStatePassed],
		counts[types.SpecStateFailed]+counts[types.SpecStatePanicked]+counts[types.SpecStateTimedout], counts[types.SpecStateSkipped], counts[types.SpecStatePending])
	t.Logf("%d skipped or pending specs:\n%s", len(skipped), strings.Join(skipped, "\n"))
}
