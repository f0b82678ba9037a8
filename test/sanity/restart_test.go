package sanity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/hostcgroup"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// nodeProc is a node plugin running as its own process.
type nodeProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	socket string
	conn   *grpc.ClientConn
	node   csi.NodeClient
	done   chan struct{}
}

// startNode runs bin/node with the given state under dir/name.
func startNode(t *testing.T, bin, dir, name, storeURL string) *nodeProc {
	t.Helper()
	return startNodeIn(t, bin, dir, name, storeURL, nil)
}

// startNodeIn runs bin/node like startNode, with more flags, moved into
// the cgroup container (if not nil) right after it starts: a node plugin
// in a container.
func startNodeIn(t *testing.T, bin, dir, name, storeURL string, container *hostcgroup.Group, flags ...string) *nodeProc {
	t.Helper()
	base := filepath.Join(dir, name)
	os.MkdirAll(base, 0o700)
	p := &nodeProc{t: t, socket: filepath.Join(base, "csi.sock"), done: make(chan struct{})}
	logf, err := os.OpenFile(filepath.Join(base, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin,
		"--endpoint", "unix://"+p.socket, "--node-id", name, "--store", "default="+storeURL,
		"--state-dir", filepath.Join(base, "state"), "--wal-dir", filepath.Join(base, "wal"),
		"--attach-dir", filepath.Join(base, "attach"), "--attacher", "nbdfuse",
		"--plugin", testutil.Plugin(t), "--http-address", "0", "--v", "2", "--nbdkit", nbdkitBin())
	p.cmd.Args = append(p.cmd.Args, flags...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if container != nil {
		if err := container.Place(p.cmd.Process.Pid); err != nil {
			p.cmd.Process.Kill()
			t.Fatal(err)
		}
	}
	logf.Close()
	go func() { p.cmd.Wait(); close(p.done) }()
	// The node plugin heals what was staged before it listens: once its
	// socket is there, adopted volumes are back.
	testutil.Eventually(t, 2*time.Minute, "the node plugin to listen on "+p.socket, func() (bool, error) {
		select {
		case <-p.done:
			b, _ := os.ReadFile(filepath.Join(base, "node.log"))
			t.Fatalf("node plugin exited:\n%s", b)
		default:
		}
		_, err := os.Stat(p.socket)
		return err == nil, err
	})
	p.conn, err = grpc.NewClient("unix://"+p.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	p.node = csi.NewNodeClient(p.conn)
	return p
}

// kill kills the node plugin with SIGKILL (no chance to clean up).
func (p *nodeProc) kill() {
	p.conn.Close()
	p.cmd.Process.Kill()
	<-p.done
}

// stop stops it with SIGTERM.
func (p *nodeProc) stop() {
	p.conn.Close()
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// exitCode is the node plugin's exit code once it has exited.
func (p *nodeProc) exitCode() int {
	<-p.done
	return p.cmd.ProcessState.ExitCode()
}

var mountCap = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
}

// TestNodeRestart stages a filesystem volume, keeps writing files to it,
// kills the node plugin with SIGKILL and starts it again: the writes go on
// without an error (nbdkit and the attachment outlive the plugin), the new
// plugin re-adopts them and unstages the volume (draining it). Staged on a
// "second node" (another state and WAL directory), the files all read back
// with their checksums.
func TestNodeRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("stages a real volume; skipped with -short")
	}
	needNodeTools(t)
	bin := testutil.Command(t, "./cmd/node")
	dir := t.TempDir()
	t.Cleanup(func() { cleanupDir(t, dir) })
	storeDir := filepath.Join(dir, "store")
	os.MkdirAll(storeDir, 0o700)
	storeURL := "file://" + storeDir
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	st, err := backend.Open(ctx, storeURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := vb.CreateOnly(ctx, st, "restart-vol", 512<<20); err != nil {
		t.Fatal(err)
	}
	st.Close()
	volID := "default/restart-vol"

	a := startNode(t, bin, dir, "node-a", storeURL)
	stagingA := filepath.Join(dir, "staging-a")
	if _, err := a.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: stagingA, VolumeCapability: mountCap}); err != nil {
		t.Fatalf("stage: %v", err)
	}
	unstaged := false
	defer func() {
		if !unstaged { // leave nothing mounted behind a failed test
			exec.Command("umount", stagingA).Run()
		}
	}()

	w := startWriter(stagingA)
	w.waitFiles(t, 20, "before the kill")
	a.kill()
	t.Logf("node plugin killed after %d files", w.count())
	if os.Getenv("VB_DEBUG") != "" {
		out, _ := exec.Command("sh", "-c", "ps -eo pid,ppid,pgid,sid,stat,cmd | grep "+dir+" | grep -v grep").CombinedOutput()
		t.Logf("processes after the kill:\n%s", out)
		time.Sleep(time.Second) // not synchronisation: a second debug snapshot, a second later
		out, _ = exec.Command("sh", "-c", "ps -eo pid,ppid,pgid,sid,stat,cmd | grep "+dir+" | grep -v grep").CombinedOutput()
		t.Logf("processes 1s after the kill:\n%s", out)
	}
	// Writes go on while the node plugin is down.
	w.waitFiles(t, w.count()+20, "while the node plugin is down")
	a = startNode(t, bin, dir, "node-a", storeURL)
	// ... and after it is back.
	w.waitFiles(t, w.count()+20, "after the node plugin restarted")
	h, err := a.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: volID})
	if err != nil {
		t.Fatalf("health after restart: %v", err)
	}
	if len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Errorf("volume unhealthy after the node plugin restarted: %v", h.GetVolumeHealth().GetHealthStatuses())
	}
	want := w.stop()
	if err := w.error(); err != nil {
		t.Fatalf("write failed: %v", err)
	}
	t.Logf("%d files written across the restart", len(want))
	if len(want) < 10 {
		t.Fatalf("only %d files written", len(want))
	}
	if _, err := a.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: stagingA}); err != nil {
		t.Fatalf("unstage after restart: %v", err)
	}
	unstaged = true
	a.stop()
	if out, _ := exec.Command("pgrep", "-f", filepath.Join(dir, "node-a")).Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("processes of node-a still run after unstage: %s", out)
	}

	// Elsewhere: another node's state and WAL directories.
	b := startNode(t, bin, dir, "node-b", storeURL)
	defer b.stop()
	stagingB := filepath.Join(dir, "staging-b")
	if _, err := b.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: stagingB, VolumeCapability: mountCap}); err != nil {
		t.Fatalf("stage on node-b: %v", err)
	}
	for name, sum := range want {
		got, err := fileSum(filepath.Join(stagingB, name))
		if err != nil || got != sum {
			t.Errorf("%s: checksum %s (%v), want %s", name, got, err, sum)
		}
	}
	if _, err := b.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: stagingB}); err != nil {
		t.Fatalf("unstage on node-b: %v", err)
	}
}

// writer writes numbered files of pseudo-random content, each fsynced,
// until stopped, remembering each file's checksum.
type writer struct {
	mu   sync.Mutex
	sums map[string]string // guarded by mu
	err  error             // guarded by mu: the first write error
	quit chan struct{}
	done chan struct{}
}

func startWriter(dir string) *writer {
	w := &writer{sums: map[string]string{}, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		r := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 256<<10)
		for i := 0; ; i++ {
			select {
			case <-w.quit:
				return
			default:
			}
			for j := range buf {
				buf[j] = byte(r.Uint32())
			}
			name := fmt.Sprintf("f%05d", i)
			err := writeSynced(filepath.Join(dir, name), buf[:4096+r.IntN(len(buf)-4096)])
			w.mu.Lock()
			if err != nil {
				w.err = fmt.Errorf("%s: %w", name, err)
				w.mu.Unlock()
				return
			}
			w.mu.Unlock()
			sum, err := fileSum(filepath.Join(dir, name))
			w.mu.Lock()
			if err != nil {
				w.err = err
			} else {
				w.sums[name] = sum
			}
			w.mu.Unlock()
			if err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond) // not synchronisation: paces the writer
		}
	}()
	return w
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.sums)
}

// waitFiles waits until the writer has written n files, and fails the test
// if a write fails first.
func (w *writer) waitFiles(t *testing.T, n int, when string) {
	t.Helper()
	testutil.Eventually(t, time.Minute, fmt.Sprintf("%d files written %s", n, when), func() (bool, error) {
		if err := w.error(); err != nil {
			t.Fatalf("write failed %s: %v", when, err)
		}
		c := w.count()
		return c >= n, fmt.Errorf("%d files written", c)
	})
}

func (w *writer) error() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *writer) stop() map[string]string {
	close(w.quit)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sums
}

func writeSynced(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func fileSum(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// cleanupDir dumps the logs under dir if the test failed, then undoes what
// a failed test may have left there: mounts, loop devices, FUSE mounts and
// the processes (found by their command lines naming dir, killed by pid).
func cleanupDir(t *testing.T, dir string) {
	if d := os.Getenv("VB_DEBUG"); d != "" && t.Failed() {
		exec.Command("sh", "-c", "mkdir -p "+d+" && find "+dir+" -name '*.log' -exec cp --backup=numbered {} "+d+"/ \\;").Run()
	}
	if t.Failed() {
		filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.Mode().IsRegular() && strings.HasSuffix(p, ".log") {
				b, _ := os.ReadFile(p)
				if len(b) > 8192 {
					b = b[len(b)-8192:]
				}
				t.Logf("==== %s\n%s", p, b)
			}
			return nil
		})
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	var mnts []string
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], dir) {
			mnts = append(mnts, f[1])
		}
	}
	for i := len(mnts) - 1; i >= 0; i-- {
		if !strings.Contains(mnts[i], "/attach/") {
			exec.Command("umount", "-l", mnts[i]).Run()
		}
	}
	if out, err := exec.Command("losetup", "-a").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if dev, rest, ok := strings.Cut(l, ":"); ok && strings.Contains(rest, dir) {
				exec.Command("losetup", "-d", dev).Run()
			}
		}
	}
	for _, m := range mnts {
		if strings.Contains(m, "/attach/") {
			exec.Command("fusermount3", "-u", "-z", m).Run()
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), dir) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func nbdkitBin() string {
	if b := os.Getenv("VB_NBDKIT"); b != "" {
		return b
	}
	return "nbdkit"
}

// TestNodeContainer runs the node plugin as if in a container: in a cgroup
// of its own, with --server-cgroup naming another. It stages a filesystem
// volume (nbdfuse attacher) and keeps writing files to it. A SIGTERM makes
// the node plugin exit 0 and leaves nbdkit serving; then every process in
// the "container" cgroup is killed, as a container runtime stops a
// container. The writes go on without an error throughout (nbdkit and
// nbdfuse were moved out of the container's cgroup), each restarted node
// plugin adopts the same nbdkit, forwards its log lines, and finally
// unstages the volume.
func TestNodeContainer(t *testing.T) {
	if testing.Short() {
		t.Skip("stages a real volume; skipped with -short")
	}
	needNodeTools(t)
	container := testutil.Cgroup(t, "container")
	servers := testutil.Cgroup(t, "servers")
	bin := testutil.Command(t, "./cmd/node")
	dir := t.TempDir()
	t.Cleanup(func() { cleanupDir(t, dir) })
	storeDir := filepath.Join(dir, "store")
	os.MkdirAll(storeDir, 0o700)
	storeURL := "file://" + storeDir
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	st, err := backend.Open(ctx, storeURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := vb.CreateOnly(ctx, st, "ctr-vol", 256<<20); err != nil {
		t.Fatal(err)
	}
	st.Close()
	volID := "default/ctr-vol"
	flags := []string{"--cgroup-root", testutil.CgroupRoot, "--server-cgroup", servers.Name()}
	start := func() *nodeProc { return startNodeIn(t, bin, dir, "node-c", storeURL, container, flags...) }

	// A cgroup it cannot use: the node plugin refuses to start.
	bad := exec.Command(bin, "--endpoint", "unix://"+filepath.Join(dir, "bad.sock"), "--node-id", "bad", "--store", "default="+storeURL,
		"--state-dir", filepath.Join(dir, "bad"), "--wal-dir", filepath.Join(dir, "bad-wal"), "--plugin", testutil.Plugin(t),
		"--http-address", "0", "--cgroup-root", dir, "--server-cgroup", "x")
	if out, err := bad.CombinedOutput(); err == nil || !strings.Contains(string(out), "--server-cgroup=x") {
		t.Fatalf("node plugin with an unusable cgroup: %v\n%s", err, out)
	}

	a := start()
	staging := filepath.Join(dir, "staging")
	if _, err := a.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
		t.Fatalf("stage: %v", err)
	}
	unstaged := false
	defer func() {
		if !unstaged {
			exec.Command("umount", staging).Run()
		}
	}()
	pidfiles, _ := filepath.Glob(filepath.Join(dir, "node-c", "state", "volumes", "*", "nbdkit.pid"))
	if len(pidfiles) != 1 {
		t.Fatalf("pidfiles: %v", pidfiles)
	}
	nbdkitPid := func() string {
		b, _ := os.ReadFile(pidfiles[0])
		return strings.TrimSpace(string(b))
	}
	pid := nbdkitPid()
	inServers := func(when string) {
		t.Helper()
		pids, err := servers.Pids()
		if err != nil || len(pids) < 3 { // keeper, nbdkit, nbdfuse
			t.Fatalf("%s: processes in the servers' cgroup: %v %v", when, pids, err)
		}
		if ps, _ := container.Pids(); len(ps) != 1 || ps[0] != a.cmd.Process.Pid {
			t.Fatalf("%s: processes in the container's cgroup: %v, want only the node plugin %d", when, ps, a.cmd.Process.Pid)
		}
	}
	inServers("after stage")

	w := startWriter(staging)
	w.waitFiles(t, 20, "before the SIGTERM")
	a.stop()
	if c := a.exitCode(); c != 0 {
		t.Fatalf("node plugin exited %d on SIGTERM", c)
	}
	w.waitFiles(t, w.count()+20, "after the SIGTERM")
	if nbdkitPid() != pid {
		t.Fatal("nbdkit changed across a SIGTERM of the node plugin")
	}

	a = start()
	inServers("after the restart")
	w.waitFiles(t, w.count()+20, "after the restart")
	testutil.KillCgroup(t, container)
	<-a.done
	w.waitFiles(t, w.count()+20, "after the container was killed")
	a = start()
	w.waitFiles(t, w.count()+20, "after the second restart")
	if nbdkitPid() != pid {
		t.Fatal("nbdkit was restarted: it did not survive the container")
	}
	h, err := a.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: volID})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("health after the container was killed: %v %v", h.GetVolumeHealth().GetHealthStatuses(), err)
	}
	want := w.stop()
	if err := w.error(); err != nil {
		t.Fatalf("write failed: %v", err)
	}
	t.Logf("%d files written across a SIGTERM and a killed container", len(want))
	if _, err := a.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging}); err != nil {
		t.Fatalf("unstage: %v", err)
	}
	unstaged = true
	a.stop()
	logs, _ := os.ReadFile(filepath.Join(dir, "node-c", "node.log"))
	if !strings.Contains(string(logs), "adopted running nbdkit") || !strings.Contains(string(logs), `volume_id="default/ctr-vol" source="nbdkit"`) {
		t.Errorf("node log lacks the adoption or nbdkit's forwarded lines:\n%.4000s", logs)
	}
	if pids, _ := servers.Pids(); len(pids) != 0 {
		t.Errorf("processes left in the servers' cgroup after unstage: %v", pids)
	}
}
