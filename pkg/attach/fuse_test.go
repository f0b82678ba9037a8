//go:build linux

package attach

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/hostcgroup"
)

// needFuse skips (or fails, under VB_REQUIRE) unless the nbdfuse + loop
// attacher can run here.
func needFuse(t *testing.T) {
	t.Helper()
	testutil.NeedRoot(t)
	testutil.NeedPath(t, "/dev/fuse")
	testutil.NeedPath(t, "/dev/loop-control")
	testutil.NeedCommands(t, "nbdfuse", "losetup", "nbdkit")
}

// degraded notes that part of a test does not run here for want of a
// capability (the rest of the test does), or fails the test when
// VB_REQUIRE requires that capability.
func degraded(t *testing.T, capability, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if testutil.Required(capability) {
		t.Fatalf("missing capability %q, required by VB_REQUIRE=%s: %s", capability, os.Getenv("VB_REQUIRE"), msg)
	}
	t.Logf("%s (capability %q; VB_REQUIRE=all makes this a failure)", msg, capability)
}

// newFuse returns an nbdfuse attacher on a fresh state dir, with a cleanup
// that removes whatever the test left: mounts, loop devices, nbdfuse.
func newFuse(t *testing.T) (*attacher, string) {
	t.Helper()
	needFuse(t)
	dir := t.TempDir()
	a := fuseAt(t, dir)
	t.Cleanup(func() { forceCleanup(t, dir) })
	return a, dir
}

func fuseAt(t *testing.T, dir string) *attacher {
	t.Helper()
	a, err := New(KindNbdfuse, Options{StateDir: dir, Timeout: 30 * time.Second}) // the product default: nbdfuse and losetup are slow in an emulated guest
	if err != nil {
		t.Fatal(err)
	}
	return a.(*attacher)
}

// forceCleanup unmounts everything under dir, frees loop devices backed
// by files under it and kills nbdfuse processes serving under it.
func forceCleanup(t *testing.T, dir string) {
	for _, m := range mountsUnder(dir) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err == nil {
			t.Logf("cleanup: unmounted %s", m)
		}
	}
	for _, l := range loopsUnder(dir) {
		backing, _ := readSysfs(filepath.Join(sysBlock(l), "loop", "backing_file"))
		loopClear(l, backing)
		t.Logf("cleanup: detached %s", l)
	}
	for _, pid := range nbdfuseUnder(dir) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Logf("cleanup: killed nbdfuse %d", pid)
	}
	for _, m := range mountsUnder(dir) {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// mountsUnder lists mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 {
			if p := unescapeMount(f[4]); strings.HasPrefix(p, dir+"/") {
				out = append(out, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func loopsUnder(dir string) []string {
	ms, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, m := range ms {
		if s, err := readSysfs(m); err == nil && strings.HasPrefix(s, dir+"/") {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(m))))
		}
	}
	return out
}

func nbdfuseUnder(dir string) []int {
	ps, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []int
	for _, p := range ps {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.HasPrefix(b, []byte("nbdfuse\x00")) && !bytes.Contains(b, []byte("/nbdfuse\x00")) {
			continue
		}
		if bytes.Contains(b, []byte(dir+"/")) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if _, _, ok := procStart(pid); ok {
				out = append(out, pid)
			}
		}
	}
	return out
}

// assertClean checks that nothing of the attachments under dir is left.
func assertClean(t *testing.T, dir, id string) {
	t.Helper()
	if m := mountsUnder(dir); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	if l := loopsUnder(dir); len(l) > 0 {
		t.Errorf("loop devices left: %v", l)
	}
	if p := nbdfuseUnder(dir); len(p) > 0 {
		t.Errorf("nbdfuse left: %v", p)
	}
	if _, err := os.Stat(filepath.Join(dir, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir left: %v", err)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mount(t *testing.T, dev, fstype string) string {
	t.Helper()
	mnt := t.TempDir()
	run(t, "mount", "-t", fstype, dev, mnt)
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	return mnt
}

func fsSize(t *testing.T, mnt string) int64 {
	t.Helper()
	var s syscall.Statfs_t
	if err := syscall.Statfs(mnt, &s); err != nil {
		t.Fatal(err)
	}
	return int64(s.Blocks) * s.Bsize
}

func TestFuseLifecycle(t *testing.T) {
	ctx := context.Background()
	a, dir := newFuse(t)
	backing := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 64<<20); err != nil {
		t.Fatal(err)
	}
	sock := startNbdkit(t, "file", backing)
	exp := Export{Socket: sock, ID: "pvc-0001"}

	dev, err := a.Attach(ctx, exp)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("attached: %+v", dev)
	if !strings.HasPrefix(dev.Path, "/dev/loop") || dev.Kind != KindNbdfuse || dev.ID != exp.ID || dev.Size != 64<<20 {
		t.Fatalf("device %+v", dev)
	}
	st, _ := a.readState(exp.ID)
	t.Logf("direct I/O on the loop device: %v", st.DirectIO)

	// Idempotent.
	dev2, err := a.Attach(ctx, exp)
	if err != nil || dev2 != dev {
		t.Fatalf("second Attach: %+v %v", dev2, err)
	}

	// Plain file I/O on the device reaches the server's file.
	data := make([]byte, 1<<20)
	rand.Read(data)
	f, err := os.OpenFile(dev.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 5<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 5<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back from the device: %v", err)
	}
	f.Close()
	onDisk, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk[5<<20:6<<20], data) {
		t.Fatal("the server's file does not hold what was written to the device")
	}

	// A filesystem.
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		degraded(t, "mkfs.ext4", "mkfs.ext4 is not installed: no filesystem on the device")
	} else {
		run(t, "mkfs.ext4", "-q", "-F", dev.Path)
		mnt := mount(t, dev.Path, "ext4")
		if err := os.WriteFile(filepath.Join(mnt, "hello.txt"), []byte("hello viperblock\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// Mounted: Detach refuses and leaves it attached.
		if err := a.Detach(ctx, exp.ID); !errors.Is(err, ErrBusy) {
			t.Fatalf("Detach of a mounted device: %v, want ErrBusy", err)
		}
		if _, ok, err := a.Find(ctx, exp.ID); !ok || err != nil {
			t.Fatalf("after refused Detach: Find %v %v", ok, err)
		}
		run(t, "umount", mnt)
		mnt = mount(t, dev.Path, "ext4")
		if b, err := os.ReadFile(filepath.Join(mnt, "hello.txt")); err != nil || string(b) != "hello viperblock\n" {
			t.Fatalf("after remount: %q %v", b, err)
		}
		run(t, "umount", mnt)
	}

	// Find from a new attacher on the same state dir (a restarted node
	// plugin), which then detaches.
	b := fuseAt(t, dir)
	dev3, ok, err := b.Find(ctx, exp.ID)
	if err != nil || !ok || dev3 != dev {
		t.Fatalf("Find after restart: %+v %v %v", dev3, ok, err)
	}
	if err := b.Detach(ctx, exp.ID); err != nil {
		t.Fatal(err)
	}
	assertClean(t, dir, exp.ID)
	if err := b.Detach(ctx, exp.ID); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if err := a.Detach(ctx, exp.ID); err != nil {
		t.Fatalf("Detach from the first attacher: %v", err)
	}
	if d, ok, err := a.Find(ctx, exp.ID); ok || err != nil {
		t.Fatalf("Find after Detach: %+v %v %v", d, ok, err)
	}
	if _, err := a.Resize(ctx, exp); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("Resize after Detach: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, exp.ID+".lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file left: %v", err)
	}
}

// TestFuseResize grows a mounted filesystem: the export advertises 1 GiB
// (standing in for the plugin's virtual_size=), the device shows the
// volume's size and Resize raises it live.
func TestFuseResize(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			testutil.NeedCommands(t, "mkfs."+fs)
			ctx := context.Background()
			a, _ := newFuse(t)
			sock := startNbdkit(t, "memory", "1G")
			exp := Export{Socket: sock, ID: "grow-" + fs, Size: 320 << 20}
			dev, err := a.Attach(ctx, exp)
			if err != nil {
				t.Fatal(err)
			}
			if dev.Size != 320<<20 {
				t.Fatalf("device size %d", dev.Size)
			}
			run(t, "mkfs."+fs, "-q", dev.Path)
			mnt := mount(t, dev.Path, fs)
			data := make([]byte, 4<<20)
			rand.Read(data)
			if err := os.WriteFile(filepath.Join(mnt, "data"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			before := fsSize(t, mnt)

			// Bad sizes first.
			for _, bad := range []int64{256 << 20, 2 << 30} {
				if _, err := a.Resize(ctx, Export{Socket: sock, ID: exp.ID, Size: bad}); !errors.Is(err, ErrInvalid) {
					t.Errorf("Resize to %d: %v, want ErrInvalid", bad, err)
				}
			}

			exp.Size = 640 << 20
			dev, err = a.Resize(ctx, exp)
			if err != nil {
				t.Fatal(err)
			}
			if sz, _ := blockSize(dev.Path); dev.Size != 640<<20 || sz != 640<<20 {
				t.Fatalf("after Resize: %+v, kernel %d", dev, sz)
			}
			if fs == "xfs" {
				run(t, "xfs_growfs", mnt)
				t.Logf("xfs_growfs online: ok")
			} else if out, err := exec.Command("resize2fs", dev.Path).CombinedOutput(); err == nil {
				t.Logf("resize2fs online: ok")
			} else {
				if !strings.Contains(string(out), "Permission denied") || hasCap(24 /* CAP_SYS_RESOURCE */) {
					t.Fatalf("resize2fs online: %v\n%s", err, out)
				}
				// ext4's online resize needs CAP_SYS_RESOURCE, which
				// this sandbox withholds even from root: grow offline.
				t.Logf("online resize2fs refused without CAP_SYS_RESOURCE; growing offline instead")
				run(t, "umount", mnt)
				run(t, "e2fsck", "-f", "-p", dev.Path)
				run(t, "resize2fs", dev.Path)
				mnt = mount(t, dev.Path, fs)
			}
			after := fsSize(t, mnt)
			t.Logf("%s: %d -> %d bytes", fs, before, after)
			if after < before+250<<20 {
				t.Fatalf("filesystem did not grow: %d -> %d", before, after)
			}
			if got, err := os.ReadFile(filepath.Join(mnt, "data")); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("data after grow: %v", err)
			}
			// Allocate more than the old size, and write at its end.
			bf, err := os.Create(filepath.Join(mnt, "big"))
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Fallocate(int(bf.Fd()), 0, 0, 400<<20); err != nil {
				t.Fatalf("allocating past the old size: %v", err)
			}
			if _, err := bf.WriteAt(data, 396<<20); err != nil {
				t.Fatal(err)
			}
			if err := bf.Close(); err != nil {
				t.Fatal(err)
			}
			run(t, "umount", mnt)

			// Size 0: up to what nbdfuse sees (the whole virtual size).
			dev, err = a.Resize(ctx, Export{Socket: sock, ID: exp.ID})
			if err != nil || dev.Size != 1<<30 {
				t.Fatalf("Resize to the export size: %+v %v", dev, err)
			}
			if err := a.Detach(ctx, exp.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// hasCap reports whether this process has capability bit in its
// effective set.
func hasCap(bit uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<bit) != 0
		}
	}
	return false
}

func TestFuseBadInput(t *testing.T) {
	ctx := context.Background()
	a, dir := newFuse(t)
	missing := filepath.Join(t.TempDir(), "gone.sock")
	_, err := a.Attach(ctx, Export{Socket: missing, ID: "vol-missing"})
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing socket: %v", err)
	}
	t.Logf("missing socket: %v", err)
	assertClean(t, dir, "vol-missing")

	for _, id := range []string{"", "..", ".hidden", "a/b", "x y", strings.Repeat("a", 201)} {
		if _, err := a.Attach(ctx, Export{Socket: missing, ID: id}); !errors.Is(err, ErrInvalid) {
			t.Errorf("Attach ID %q: %v", id, err)
		}
		if err := a.Detach(ctx, id); !errors.Is(err, ErrInvalid) {
			t.Errorf("Detach ID %q: %v", id, err)
		}
		if _, _, err := a.Find(ctx, id); !errors.Is(err, ErrInvalid) {
			t.Errorf("Find ID %q: %v", id, err)
		}
	}
	if _, err := a.Attach(ctx, Export{ID: "noaddr"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("no address: %v", err)
	}
	sock := startNbdkit(t, "memory", "64M")
	if _, err := a.Attach(ctx, Export{Socket: sock, ID: "odd", Size: 1000}); !errors.Is(err, ErrInvalid) {
		t.Errorf("size 1000: %v", err)
	}
	if _, err := a.Attach(ctx, Export{Socket: sock, ID: "toobig", Size: 128 << 20}); !errors.Is(err, ErrInvalid) {
		t.Errorf("size beyond the export: %v", err)
	}
	assertClean(t, dir, "toobig")
	if err := a.Detach(ctx, "never-attached"); err != nil {
		t.Errorf("Detach of an unknown ID: %v", err)
	}
	if _, ok, err := a.Find(ctx, "never-attached"); ok || err != nil {
		t.Errorf("Find of an unknown ID: %v %v", ok, err)
	}
	if _, err := New(KindNbdfuse, Options{DirectIO: "maybe"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("DirectIO maybe: %v", err)
	}
}

// TestFuseStale kills nbdfuse under an attachment: Find reports it stale,
// and Attach cleans up and attaches anew.
func TestFuseStale(t *testing.T) {
	ctx := context.Background()
	a, dir := newFuse(t)
	sock := startNbdkit(t, "memory", "64M")
	exp := Export{Socket: sock, ID: "stale-1"}
	dev, err := a.Attach(ctx, exp)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := a.readState(exp.ID)
	syscall.Kill(st.PID, syscall.SIGKILL)
	if err := waitFor(ctx, 30*time.Second, func() bool { return !procAlive(st.PID, st.PIDStart) }); err != nil {
		t.Fatalf("nbdfuse %d still alive after SIGKILL: %v", st.PID, err)
	}
	d, ok, err := a.Find(ctx, exp.ID)
	if ok || !errors.Is(err, ErrStale) || d.Path != dev.Path {
		t.Fatalf("Find after nbdfuse died: %+v %v %v", d, ok, err)
	}
	t.Logf("stale: %v", err)
	dev2, err := a.Attach(ctx, exp)
	if err != nil {
		t.Fatalf("Attach over a stale attachment: %v", err)
	}
	if _, ok, err := a.Find(ctx, exp.ID); !ok || err != nil {
		t.Fatalf("Find after repair: %v %v", ok, err)
	}
	f, err := os.OpenFile(dev2.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("ok"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := a.Detach(ctx, exp.ID); err != nil {
		t.Fatal(err)
	}
	assertClean(t, dir, exp.ID)
}

// TestFuseConcurrentAttach attaches one ID from many goroutines: one
// attachment results.
func TestFuseConcurrentAttach(t *testing.T) {
	ctx := context.Background()
	a, dir := newFuse(t)
	sock := startNbdkit(t, "memory", "64M")
	exp := Export{Socket: sock, ID: "conc"}
	devs := make(chan Device, 4)
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			d, err := fuseAt(t, dir).Attach(ctx, exp)
			devs <- d
			errs <- err
		}()
	}
	var first Device
	for i := 0; i < 4; i++ {
		d, err := <-devs, <-errs
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = d
		} else if d != first {
			t.Fatalf("devices differ: %+v %+v", d, first)
		}
	}
	if l := loopsUnder(dir); len(l) != 1 {
		t.Fatalf("loop devices: %v", l)
	}
	if err := a.Detach(ctx, exp.ID); err != nil {
		t.Fatal(err)
	}
	assertClean(t, dir, exp.ID)
}

// TestMain lets the test binary act as a short-lived "node plugin" for
// TestFuseSurvivesCaller.
func TestMain(m *testing.M) {
	if os.Getenv("VB_ATTACH_HELPER") == "1" {
		os.Exit(attachHelper())
	}
	os.Exit(m.Run())
}

// attachHelper attaches, reports the device on stdout and waits to be
// killed. With VB_GATE set it first waits for its stdin to close (its
// parent puts it in a cgroup meanwhile); with VB_PLACE set it places
// nbdfuse in that cgroup (see TestFuseSurvivesContainer).
func attachHelper() int {
	if os.Getenv("VB_GATE") != "" {
		io.Copy(io.Discard, os.Stdin)
	}
	o := Options{StateDir: os.Getenv("VB_DIR")}
	if name := os.Getenv("VB_PLACE"); name != "" {
		g, err := hostcgroup.Open(testutil.CgroupRoot, name)
		if err != nil {
			os.Stdout.WriteString("ERR " + err.Error() + "\n")
			return 1
		}
		o.Place = g.Place
	}
	a, err := New(KindNbdfuse, o)
	if err != nil {
		os.Stdout.WriteString("ERR " + err.Error() + "\n")
		return 1
	}
	dev, err := a.Attach(context.Background(), Export{Socket: os.Getenv("VB_SOCK"), ID: os.Getenv("VB_ID")})
	if err != nil {
		os.Stdout.WriteString("ERR " + err.Error() + "\n")
		return 1
	}
	os.Stdout.WriteString("ATTACHED " + dev.Path + "\n")
	select {}
}

// TestFuseSurvivesCaller attaches from a child process, kills the child's
// whole process group, and checks that the attachment lives on and that a
// new attacher on the same state dir finds and detaches it.
func TestFuseSurvivesCaller(t *testing.T) {
	ctx := context.Background()
	a, dir := newFuse(t)
	sock := startNbdkit(t, "memory", "64M")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "VB_ATTACH_HELPER=1", "VB_DIR="+dir, "VB_SOCK="+sock, "VB_ID=survivor")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		b := make([]byte, 512)
		n, _ := out.Read(b)
		line <- strings.TrimSpace(string(b[:n]))
	}()
	var path string
	select {
	case l := <-line:
		var ok bool
		if path, ok = strings.CutPrefix(l, "ATTACHED "); !ok {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper: %q", l)
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("helper did not attach within a minute")
	}
	// What a restart of the node plugin's container does to its group.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGHUP)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()

	st, err := a.readState("survivor")
	if err != nil || st == nil {
		t.Fatalf("state: %v", err)
	}
	if !procAlive(st.PID, st.PIDStart) {
		t.Fatal("nbdfuse died with the process that attached it")
	}
	dev, ok, err := a.Find(ctx, "survivor")
	if !ok || err != nil || dev.Path != path {
		t.Fatalf("Find: %+v %v %v (helper attached %s)", dev, ok, err, path)
	}
	f, err := os.OpenFile(dev.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("still here")
	if _, err := f.WriteAt(msg, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := f.ReadAt(got, 4096); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("I/O after the caller died: %q %v", got, err)
	}
	f.Close()
	if err := a.Detach(ctx, "survivor"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, dir, "survivor")
}

// TestFuseReadOnlyNamedTCP attaches a named export over TCP, read-only.
func TestFuseReadOnlyNamedTCP(t *testing.T) {
	ctx := context.Background()
	a, dir := newFuse(t)
	addr := startNbdkitTCP(t, "memory", "64M")
	exp := Export{Addr: addr, Name: "vol one", ID: "ro-tcp", ReadOnly: true}
	dev, err := a.Attach(ctx, exp)
	if err != nil {
		t.Fatal(err)
	}
	if ro, _ := readSysfs(filepath.Join(sysBlock(dev.Path), "ro")); ro != "1" {
		t.Errorf("%s ro=%q", dev.Path, ro)
	}
	f, err := os.OpenFile(dev.Path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if w, err := os.OpenFile(dev.Path, os.O_WRONLY, 0); err == nil {
		_, werr := w.WriteAt(b, 0)
		if werr == nil {
			werr = w.Sync()
		}
		w.Close()
		if werr == nil {
			t.Error("wrote to a read-only device")
		}
	}
	if err := a.Detach(ctx, exp.ID); err != nil {
		t.Fatal(err)
	}
	assertClean(t, dir, exp.ID)
}
