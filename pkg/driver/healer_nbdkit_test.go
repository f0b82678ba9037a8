package driver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// countingSup counts the nbdkit servers a real supervisor starts.
type countingSup struct {
	Supervisor
	mu     sync.Mutex
	starts int // guarded by mu
	// before, when set, runs before each start (after the node's checks).
	before func(spec nbdkitSpec) // guarded by mu
}

func (c *countingSup) Start(ctx context.Context, spec nbdkitSpec) (server, error) {
	c.mu.Lock()
	c.starts++
	before := c.before
	c.mu.Unlock()
	if before != nil {
		before(spec)
	}
	return c.Supervisor.Start(ctx, spec)
}

func (c *countingSup) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.starts
}

// realNode is a node service that runs the real nbdkit and plugin on a file
// store, with fake attacher and mounter (no devices, no mounts).
type realNode struct {
	t   *testing.T
	ns  *NodeServer
	sup *countingSup
	dir string
}

func newRealNode(t *testing.T, dir, name, storeURL string) *realNode {
	t.Helper()
	n := &realNode{t: t, sup: &countingSup{Supervisor: NewSupervisor()}, dir: filepath.Join(dir, name)}
	opts := &Options{Stores: Stores{"default": storeURL}, NodeID: name, StateDir: filepath.Join(n.dir, "state"),
		WALDir: filepath.Join(n.dir, "wal"), Plugin: testutil.Plugin(t), Nbdkit: "nbdkit", ReadyTimeout: time.Minute,
		DrainLagBytes: 1 << 30, DrainLagAge: time.Hour}
	var err error
	n.ns, err = NewNodeServer(opts, NodeDeps{Attacher: newFakeAttacher(), Supervisor: n.sup, Mounter: newFakeMounter()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.ns.Close()
		for _, s := range n.ns.servers.all() { // a failed test leaves no nbdkit behind
			s.Kill()
			<-s.Done()
		}
	})
	return n
}

var vid = volumeID{Store: "default", Vol: "v1"}

func (n *realNode) staging() string { return filepath.Join(n.dir, "staging") }

func (n *realNode) stage() {
	n.t.Helper()
	if _, err := n.ns.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: vid.String(), StagingTargetPath: n.staging(),
		VolumeCapability: mountCapability(snw), VolumeContext: map[string]string{ParamDrainInterval: "1h", ParamLeaseDuration: "1s"}}); err != nil {
		n.t.Fatalf("stage on %s: %v", n.ns.opts.NodeID, err)
	}
}

func (n *realNode) unstage() error {
	var err error
	testutil.WaitFor(context.Background(), 60*time.Second, func() (bool, error) {
		_, err = n.ns.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: vid.String(), StagingTargetPath: n.staging()})
		return codeOf(err).String() != "Aborted", nil // the healer may hold the volume's lock a moment
	})
	return err
}

// qemuIO runs qemu-io commands against the volume's nbdkit socket.
func (n *realNode) qemuIO(cmds ...string) error {
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, "nbd+unix:///?socket="+n.ns.paths(vid).Socket)
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-io %v: %v: %s", cmds, err, out)
	}
	return nil
}

// holdConn runs qemu-io commands on a connection it keeps open until the
// returned function is called: the plugin drains the volume when its last
// connection closes, and a test may want written data to stay in the WAL.
func (n *realNode) holdConn(cmds ...string) (release func()) {
	n.t.Helper()
	cmd := exec.Command("qemu-io", "-f", "raw", "nbd+unix:///?socket="+n.ns.paths(vid).Socket)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	for _, c := range cmds {
		fmt.Fprintln(stdin, c)
	}
	return func() {
		stdin.Close()
		cmd.Wait() // its connection may have died with nbdkit: any exit status
	}
}

// pauseServer stops the volume's nbdkit (SIGSTOP): it renews nothing and
// answers no release request, so another node takes the volume over once
// its lease has run out.
func (n *realNode) pauseServer() {
	n.t.Helper()
	srv := n.ns.running(vid)
	if srv == nil {
		n.t.Fatal("no nbdkit runs for the volume")
	}
	if err := syscall.Kill(srv.Pid(), syscall.SIGSTOP); err != nil {
		n.t.Fatal(err)
	}
}

func (n *realNode) killServer() {
	n.t.Helper()
	srv := n.ns.running(vid)
	if srv == nil {
		n.t.Fatal("no nbdkit runs for the volume")
	}
	if err := srv.Kill(); err != nil {
		n.t.Fatal(err)
	}
	<-srv.Done()
}

func needRealNbdkit(t *testing.T) (storeURL string, store backend.Store) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs nbdkit; skipped with -short")
	}
	testutil.NeedCommands(t, "nbdkit", "qemu-io")
	testutil.Plugin(t)
	dir := filepath.Join(t.TempDir(), "store")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	storeURL = "file://" + dir
	store, err := backend.Open(context.Background(), storeURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if err := vb.CreateOnly(context.Background(), store, vid.Vol, 64<<20); err != nil {
		t.Fatal(err)
	}
	return storeURL, store
}

// With the real nbdkit and plugin: node A stages the volume and writes to
// it, node B takes it over, A's nbdkit dies. A's healer must not restart it
// (which would fence B): A reports the volume fenced, B keeps writing and
// draining with its epoch in the store, A unstages without draining and
// keeps its stale WAL aside, and A can stage the volume again afterwards.
func TestHealNbdkitNeverSteals(t *testing.T) {
	storeURL, store := needRealNbdkit(t)
	ctx := context.Background()
	dir := t.TempDir()
	a := newRealNode(t, dir, "node-a", storeURL)
	a.stage()
	// Written and flushed, not drained: it stays in A's WAL (the plugin
	// drains when the last connection closes; this one stays open).
	release := a.holdConn("write -P 0xaa 0 4k", "flush")
	defer release()
	testutil.Eventually(t, 60*time.Second, "the write to reach node A's WAL", func() (bool, error) {
		n, _ := walPending(filepath.Join(a.ns.opts.WALDir, vid.Store), vid.Vol)
		return n > 0, nil
	})

	a.pauseServer() // node A stops answering (then dies): B waits its lease out
	b, err := vb.Open(ctx, store, vid.Vol, vb.Options{WALDir: filepath.Join(dir, "node-b-wal"), CacheBlocks: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.killServer()
	release()
	testutil.Eventually(t, 60*time.Second, "node A's healer to find the volume taken over", func() (bool, error) {
		return fencedByHealer(a.ns, vid.Vol)
	})
	st, _, err := a.ns.loadState(vid)
	if err != nil {
		t.Fatal(err)
	}
	if n := a.sup.count(); n != 1 || a.ns.running(vid) != nil {
		t.Fatalf("node A's healer restarted nbdkit for a volume node B owns: %d starts", n)
	}
	url, _ := a.ns.volumeURL(vid, st)
	if _, ok, _ := NewSupervisor().Adopt(a.ns.spec(vid, st, url)); ok {
		t.Fatal("an nbdkit serves the fenced volume on node A")
	}

	// B owns the volume: it writes, flushes and drains; the store's epoch
	// is B's; A's fenced write is not in the store.
	if err := writeFlushDrain(b, 0xbb, 1<<20); err != nil {
		t.Fatalf("node B after node A's healer ran: %v", err)
	}
	inf, err := vb.Inspect(ctx, store, vid.Vol)
	if err != nil || inf.Epoch != b.Epoch() {
		t.Fatalf("store epoch %d (%v), want node B's %d", inf.Epoch, err, b.Epoch())
	}
	buf := make([]byte, vb.BlockSize)
	if _, err := b.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, make([]byte, vb.BlockSize)) {
		t.Fatalf("node B reads node A's fenced write (%v)", err)
	}

	if err := a.unstage(); err != nil {
		t.Fatalf("unstage on node A of the fenced volume: %v", err)
	}
	if _, err := os.Stat(a.ns.paths(vid).Dir); !os.IsNotExist(err) {
		t.Fatalf("node A kept the volume's state: %v", err)
	}
	checkStaleWAL(t, filepath.Join(a.ns.opts.WALDir, vid.Store, vid.Vol))
	if a.sup.count() != 1 {
		t.Fatal("node A's unstage served the fenced volume again")
	}
	if err := writeFlushDrain(b, 0xcc, 2<<20); err != nil {
		t.Fatalf("node B after node A's unstage: %v", err)
	}
	if inf, err := vb.Inspect(ctx, store, vid.Vol); err != nil || inf.Epoch != b.Epoch() {
		t.Fatalf("store epoch %d (%v) after node A's unstage, want node B's %d", inf.Epoch, err, b.Epoch())
	}
	if err := b.Close(); err != nil {
		t.Fatalf("node B's close: %v", err)
	}

	// Node A stages it again: a new stage, which sees B's data.
	a.stage()
	if err := a.qemuIO("read -P 0xbb 1M 4k", "read -P 0xcc 2M 4k", "read -P 0 0 4k"); err != nil {
		t.Fatal(err)
	}
	if err := a.unstage(); err != nil {
		t.Fatal(err)
	}
	if inf, err := vb.Inspect(ctx, store, vid.Vol); err != nil || inf.Open {
		t.Fatalf("volume not drained after node A's second unstage: %+v %v", inf, err)
	}
}

// The control: nbdkit dies and nobody took the volume over; the healer
// restarts it, which replays the WAL.
func TestHealNbdkitRestarts(t *testing.T) {
	storeURL, store := needRealNbdkit(t)
	a := newRealNode(t, t.TempDir(), "node-a", storeURL)
	a.stage()
	if err := a.qemuIO("write -P 0xaa 0 4k", "flush"); err != nil {
		t.Fatal(err)
	}
	a.killServer()
	testutil.Eventually(t, 60*time.Second, "the healer to restart nbdkit", func() (bool, error) {
		h, err := a.ns.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: vid.String()})
		if err != nil {
			return false, err
		}
		es := h.GetVolumeHealth().GetHealthStatuses()
		return a.ns.running(vid) != nil && len(es) == 0, fmt.Errorf("running %v, health %v", a.ns.running(vid) != nil, es)
	})
	if n := a.sup.count(); n != 2 {
		t.Fatalf("%d nbdkit starts, want 2", n)
	}
	if err := a.qemuIO("read -P 0xaa 0 4k"); err != nil {
		t.Fatalf("flushed write lost across the restart: %v", err)
	}
	if err := a.unstage(); err != nil {
		t.Fatal(err)
	}
	if inf, err := vb.Inspect(context.Background(), store, vid.Vol); err != nil || inf.Open {
		t.Fatalf("volume not drained: %+v %v", inf, err)
	}
}

// With the real nbdkit and plugin: node A's nbdkit dies, A's healer checks
// that the volume is still A's, and node B takes it over just before the
// restarted nbdkit opens it. That nbdkit runs with resume_only=true: it
// refuses to take the volume back and exits with status 77, and A's healer
// fences the volume as if its check had failed. B keeps the volume; A's
// WAL is left as it was.
func TestHealNbdkitTakeoverAfterCheck(t *testing.T) {
	storeURL, store := needRealNbdkit(t)
	ctx := context.Background()
	dir := t.TempDir()
	a := newRealNode(t, dir, "node-a", storeURL)
	a.stage()
	release := a.holdConn("write -P 0xaa 0 4k", "flush")
	defer release()
	walDir := filepath.Join(a.ns.opts.WALDir, vid.Store)
	testutil.Eventually(t, 60*time.Second, "the write to reach node A's WAL", func() (bool, error) {
		n, _ := walPending(walDir, vid.Vol)
		return n > 0, nil
	})

	var b *vb.Volume
	var resumed bool
	a.sup.mu.Lock()
	a.sup.before = func(spec nbdkitSpec) {
		resumed = slices.Contains(spec.Params, "resume_only=true")
		var err error
		if b, err = vb.Open(ctx, store, vid.Vol, vb.Options{WALDir: filepath.Join(dir, "node-b-wal"), CacheBlocks: -1}); err != nil {
			t.Errorf("node B's takeover: %v", err)
		}
	}
	a.sup.mu.Unlock()
	a.killServer()
	release()
	segs := walSegments(t, filepath.Join(walDir, vid.Vol))
	testutil.Eventually(t, 60*time.Second, "node A's healer to find the volume taken over", func() (bool, error) {
		return fencedByHealer(a.ns, vid.Vol)
	})
	a.sup.mu.Lock()
	a.sup.before = nil
	a.sup.mu.Unlock()
	if b == nil {
		t.Fatal("node A's healer never restarted nbdkit")
	}
	defer b.Close()
	if !resumed {
		t.Fatal("node A's healer restarted nbdkit without resume_only=true")
	}
	if n := a.sup.count(); n != 2 || a.ns.running(vid) != nil {
		t.Fatalf("%d nbdkit starts, running %v: want one refused restart", n, a.ns.running(vid) != nil)
	}
	if inf, err := vb.Inspect(ctx, store, vid.Vol); err != nil || inf.Epoch != b.Epoch() {
		t.Fatalf("store epoch %d (%v), want node B's %d: node A's heal stole the volume", inf.Epoch, err, b.Epoch())
	}
	if got := walSegments(t, filepath.Join(walDir, vid.Vol)); len(got) == 0 || fmt.Sprint(got) != fmt.Sprint(segs) {
		t.Fatalf("node A's WAL segments %v after the refused restart, want %v untouched", got, segs)
	}
	if err := writeFlushDrain(b, 0xbb, 1<<20); err != nil {
		t.Fatalf("node B after node A's healer ran: %v", err)
	}
	if err := a.unstage(); err != nil {
		t.Fatalf("unstage on node A of the fenced volume: %v", err)
	}
	checkStaleWAL(t, filepath.Join(walDir, vid.Vol))
	if inf, err := vb.Inspect(ctx, store, vid.Vol); err != nil || inf.Epoch != b.Epoch() {
		t.Fatalf("store epoch %d (%v) after node A's unstage, want node B's %d", inf.Epoch, err, b.Epoch())
	}
}
