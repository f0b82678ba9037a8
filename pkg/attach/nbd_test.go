//go:build linux

package attach

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// memServer is a minimal in-process NBD server (fixed newstyle, simple
// replies, NBD_OPT_GO/INFO/EXPORT_NAME; read, write, flush, trim) over a
// byte slice, so the kernel NBD test needs neither nbdkit nor a network and
// can restart "the server" at will.
type memServer struct {
	sock string
	mu   sync.Mutex // guards data, size, l, conns
	data []byte
	size int64
	l    net.Listener
	conn map[net.Conn]bool
}

func newMemServer(t *testing.T, sock string, capacity, size int64) *memServer {
	s := &memServer{sock: sock, data: make([]byte, capacity), size: size, conn: map[net.Conn]bool{}}
	s.start(t)
	t.Cleanup(s.stop)
	return s
}

func (s *memServer) start(t *testing.T) {
	os.Remove(s.sock)
	l, err := net.Listen("unix", s.sock)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.l = l
	s.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conn[c] = true
			s.mu.Unlock()
			go s.serve(c)
		}
	}()
}

// stop closes the listener and every connection, like a server exiting.
func (s *memServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.l != nil {
		s.l.Close()
		s.l = nil
	}
	for c := range s.conn {
		c.Close()
		delete(s.conn, c)
	}
}

func (s *memServer) read(off int64, n int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.data[off:off+int64(n)]...)
}

const flagsMem = FlagHasFlags | FlagSendFlush | FlagSendTrim

func (s *memServer) serve(c net.Conn) {
	defer c.Close()
	be := binary.BigEndian
	var g [18]byte
	be.PutUint64(g[:], nbdMagic)
	be.PutUint64(g[8:], nbdOptMagic)
	be.PutUint16(g[16:], nbdFlagFixedNewstyle|nbdFlagNoZeroes)
	c.Write(g[:])
	var cf [4]byte
	if _, err := io.ReadFull(c, cf[:]); err != nil {
		return
	}
	reply := func(opt, typ uint32, data []byte) {
		b := make([]byte, 20, 20+len(data))
		be.PutUint64(b, nbdReplyMagic)
		be.PutUint32(b[8:], opt)
		be.PutUint32(b[12:], typ)
		be.PutUint32(b[16:], uint32(len(data)))
		c.Write(append(b, data...))
	}
	exportInfo := func() []byte {
		s.mu.Lock()
		defer s.mu.Unlock()
		b := make([]byte, 12)
		be.PutUint16(b, nbdInfoExport)
		be.PutUint64(b[2:], uint64(s.size))
		be.PutUint16(b[10:], flagsMem)
		return b
	}
options:
	for {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		opt := be.Uint32(h[8:])
		data := make([]byte, be.Uint32(h[12:]))
		if _, err := io.ReadFull(c, data); err != nil {
			return
		}
		switch opt {
		case nbdOptExportName:
			b := exportInfo()[2:]
			c.Write(b)
			break options
		case nbdOptInfo, nbdOptGo:
			reply(opt, nbdRepInfo, exportInfo())
			reply(opt, nbdRepAck, nil)
			if opt == nbdOptGo {
				break options
			}
		case nbdOptAbort:
			reply(opt, nbdRepAck, nil)
			return
		default:
			reply(opt, nbdRepErrUnsup, nil)
		}
	}
	var h [28]byte
	for {
		if _, err := io.ReadFull(c, h[:]); err != nil || be.Uint32(h[:]) != nbdRequestMagic {
			return
		}
		typ, cookie, off, n := be.Uint16(h[6:]), be.Uint64(h[8:]), int64(be.Uint64(h[16:])), int64(be.Uint32(h[24:]))
		var payload []byte
		if typ == 1 {
			payload = make([]byte, n)
			if _, err := io.ReadFull(c, payload); err != nil {
				return
			}
		}
		var errno uint32
		var out []byte
		s.mu.Lock()
		if typ != nbdCmdDisc && typ != 3 && (off < 0 || off+n > s.size) {
			errno = 22 // EINVAL
		} else {
			switch typ {
			case 0:
				out = append([]byte(nil), s.data[off:off+n]...)
			case 1:
				copy(s.data[off:], payload)
			case 4:
				clear(s.data[off : off+n])
			case nbdCmdDisc:
				s.mu.Unlock()
				return
			}
		}
		s.mu.Unlock()
		r := make([]byte, 16, 16+len(out))
		be.PutUint32(r, 0x67446698)
		be.PutUint32(r[4:], errno)
		be.PutUint64(r[8:], cookie)
		if _, err := c.Write(append(r, out...)); err != nil {
			return
		}
	}
}

// haveFS reports whether mkfs.<fs> is installed and the kernel knows fs.
func haveFS(fs string) bool {
	if _, err := exec.LookPath("mkfs." + fs); err != nil {
		return false
	}
	b, _ := os.ReadFile("/proc/filesystems")
	return bytes.Contains(b, []byte("\t"+fs+"\n"))
}

// TestMemServer checks the test server itself against our client.
func TestMemServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "m.sock")
	newMemServer(t, sock, 1<<20, 1<<20)
	info, err := Probe(context.Background(), Export{Socket: sock})
	if err != nil || info.Size != 1<<20 || info.Flags != flagsMem {
		t.Fatalf("%+v %v", info, err)
	}
}

// kernelNBDSkip is why the kernel NBD tests skip outside their tier.
const kernelNBDSkip = "kernel NBD runs in the VM tier (make vm-test); set VB_KERNEL_NBD=1 on a host with the nbd module"

// needKernelNBD decides by the environment alone whether the kernel NBD
// tests run: only with VB_KERNEL_NBD=1, which the VM runner
// (testdata/vm/run.sh) sets in its guest; without it they skip, whatever
// this machine has. Where they run, a missing capability (root, the nbd
// module) fails the test.
func needKernelNBD(t *testing.T) {
	t.Helper()
	if os.Getenv("VB_KERNEL_NBD") != "1" {
		t.Skip(kernelNBDSkip)
	}
	if os.Geteuid() != 0 {
		t.Fatal("VB_KERNEL_NBD=1, but kernel NBD needs root")
	}
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		t.Fatalf("VB_KERNEL_NBD=1, but the nbd kernel module is not loaded: %v", err)
	}
}

// TestKernelNBD drives the kernel NBD client: attach, I/O that reaches the
// server, Find from a new attacher, busy Detach, Resize, Reconnect after a
// server restart with I/O in flight, Detach. It needs the nbd module, so it
// runs in a VM (see testdata/vm/run.sh, which sets VB_KERNEL_NBD=1).
func TestKernelNBD(t *testing.T) {
	needKernelNBD(t)
	ctx := context.Background()
	dir := t.TempDir()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	srv := newMemServer(t, sock, 128<<20, 128<<20)
	o := Options{StateDir: dir, NoModprobe: true, DeadConnTimeout: time.Minute, Timeout: 30 * time.Second}
	att, err := New(KindNBD, o)
	if err != nil {
		t.Fatal(err)
	}
	if att.Kind() != KindNBD {
		t.Fatalf("kind %s", att.Kind())
	}
	if a, err := New(KindAuto, o); err != nil || a.Kind() != KindNBD {
		t.Fatalf("auto: %v %v", a, err)
	}
	exp := Export{Socket: sock, ID: "knbd", Size: 64 << 20}
	dev, err := att.Attach(ctx, exp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { att.Detach(context.Background(), exp.ID) })
	t.Logf("attached %+v", dev)
	if sz, _ := blockSize(dev.Path); sz != 64<<20 || dev.Size != 64<<20 || dev.Kind != KindNBD {
		t.Fatalf("device %+v, kernel size %d", dev, sz)
	}
	if b, err := readSysfs(filepath.Join(sysBlock(dev.Path), "backend")); err != nil || b != "viperblock:knbd" {
		t.Errorf("backend %q %v", b, err)
	}
	if d, err := att.Attach(ctx, exp); err != nil || d != dev {
		t.Fatalf("second Attach: %+v %v", d, err)
	}

	// I/O reaches the server.
	pattern := bytes.Repeat([]byte("kernel-nbd-"), 1<<16)[:512<<10]
	f, err := os.OpenFile(dev.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(pattern, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if !bytes.Equal(srv.read(3<<20, len(pattern)), pattern) {
		t.Fatal("the server does not hold what was written to the device")
	}

	// A new attacher (restarted node plugin) finds it.
	att2, err := New(KindNBD, o)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok, err := att2.Find(ctx, exp.ID); !ok || err != nil || d != dev {
		t.Fatalf("Find: %+v %v %v", d, ok, err)
	}

	// A mounted ext4 (when the guest has it): Detach refuses, Resize
	// grows the device and resize2fs the filesystem, online. Without it,
	// an exclusive open stands in for the mount.
	var mnt string
	if haveFS("ext4") {
		run(t, "mkfs.ext4", "-q", dev.Path)
		mnt = mount(t, dev.Path, "ext4")
		if err := os.WriteFile(filepath.Join(mnt, "f"), pattern, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := att.Detach(ctx, exp.ID); !errors.Is(err, ErrBusy) {
			t.Errorf("Detach of a mounted device: %v", err)
		}
	} else {
		degraded(t, "ext4", "no mkfs.ext4 or no ext4 in the kernel: an exclusive open stands in for a mount, and ext4 is not grown online")
		fd, err := syscall.Open(dev.Path, syscall.O_RDONLY|syscall.O_EXCL, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := att.Detach(ctx, exp.ID); !errors.Is(err, ErrBusy) {
			t.Errorf("Detach of a held device: %v", err)
		}
		syscall.Close(fd)
	}

	// Resize: to the export's size (Size 0).
	if _, err := att.Resize(ctx, Export{Socket: sock, ID: exp.ID, Size: 256 << 20}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Resize beyond the export: %v", err)
	}
	d, err := att.Resize(ctx, Export{Socket: sock, ID: exp.ID})
	if errors.Is(err, ErrUnsupported) {
		degraded(t, "nbd-resize", "Resize: %v", err)
	} else if err != nil {
		t.Fatal(err)
	} else if sz, _ := blockSize(dev.Path); d.Size != 128<<20 || sz != 128<<20 {
		t.Fatalf("after Resize: %+v, kernel %d", d, sz)
	} else {
		t.Logf("resized online to %d bytes", sz)
		if mnt != "" {
			before := fsSize(t, mnt)
			run(t, "resize2fs", dev.Path)
			after := fsSize(t, mnt)
			t.Logf("ext4 grown online: %d -> %d bytes", before, after)
			if after < before+50<<20 {
				t.Errorf("ext4 did not grow: %d -> %d", before, after)
			}
		}
	}
	if mnt != "" {
		if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, pattern) {
			t.Fatalf("file after resize: %v", err)
		}
		run(t, "umount", mnt)
	}

	// Reconnect: the server goes away with a write pending, comes back,
	// the write completes.
	// stop closes every connection before it returns, so whichever the
	// kernel meets first, a failed receive or a failed send of the write
	// below, it holds the write for a reconnect (DeadConnTimeout): no wait
	// for the kernel to notice is needed.
	srv.stop()
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(dev.Path, os.O_RDWR, 0)
		if err == nil {
			_, err = f.WriteAt([]byte("after restart"), 100<<20)
			if err == nil {
				err = f.Sync()
			}
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("I/O finished while the server was down: %v", err)
	case <-time.After(500 * time.Millisecond): // not synchronisation: the write must not finish in this window
	}
	srv.start(t)
	rc, ok := att2.(Reconnecter)
	if !ok {
		t.Fatal("not a Reconnecter")
	}
	if _, err := rc.Reconnect(ctx, Export{Socket: sock, ID: exp.ID}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("I/O after reconnect: %v", err)
		}
	case <-time.After(90 * time.Second): // the kernel retries on its own schedule, slow in an emulated guest
		t.Fatal("I/O still pending after reconnect")
	}
	if got := srv.read(100<<20, 13); string(got) != "after restart" {
		t.Fatalf("server holds %q", got)
	}
	t.Logf("reconnected: the write pending across the server restart reached the new server")

	if err := att2.Detach(ctx, exp.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(sysBlock(dev.Path), "pid")); err == nil {
		t.Error("still connected after Detach")
	}
	if _, err := os.Stat(filepath.Join(dir, exp.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state left: %v", err)
	}
	if err := att.Detach(ctx, exp.ID); err != nil {
		t.Errorf("second Detach: %v", err)
	}
	if _, ok, err := att.Find(ctx, exp.ID); ok || err != nil {
		t.Errorf("Find after Detach: %v %v", ok, err)
	}
}
