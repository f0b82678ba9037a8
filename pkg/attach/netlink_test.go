//go:build linux

package attach

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

func TestNetlinkAttrs(t *testing.T) {
	var a nlAttrs
	a.u32(nbdAttrIndex, 3)
	a.u64(nbdAttrSizeBytes, 1<<40)
	a.str(nbdAttrBackend, "viperblock:v1")
	a.nest(nbdAttrSockets, func(s *nlAttrs) {
		s.nest(nbdSockItem, func(it *nlAttrs) { it.u32(nbdSockFD, 5) })
		s.nest(nbdSockItem, func(it *nlAttrs) { it.u32(nbdSockFD, 6) })
	})
	if len(a)%4 != 0 {
		t.Fatalf("unpadded: %d", len(a))
	}
	m, err := parseAttrs(a)
	if err != nil {
		t.Fatal(err)
	}
	if len(m[nbdAttrIndex]) != 4 || len(m[nbdAttrSizeBytes]) != 8 || string(m[nbdAttrBackend]) != "viperblock:v1\x00" {
		t.Fatalf("attrs %v", m)
	}
	// The nested socket list: two items of one fd each, the layout of
	// <linux/nbd-netlink.h>.
	socks := m[nbdAttrSockets]
	var fds []uint32
	for len(socks) > 0 {
		l := int(socks[0]) | int(socks[1])<<8
		item, err := parseAttrs(socks[4:l])
		if err != nil {
			t.Fatal(err)
		}
		fd := item[nbdSockFD]
		fds = append(fds, uint32(fd[0])|uint32(fd[1])<<8)
		socks = socks[(l+3)&^3:]
	}
	if len(fds) != 2 || fds[0] != 5 || fds[1] != 6 {
		t.Fatalf("socket fds %v", fds)
	}
	if _, err := parseAttrs([]byte{8, 0, 1}); err == nil {
		t.Error("truncated attribute accepted")
	}
	msg := genlMessage(0x20, nbdCmdConnect, 1, 9, a)
	if len(msg) != 20+len(a) || msg[16] != nbdCmdConnect || int(msg[0])|int(msg[1])<<8 != len(msg) {
		t.Errorf("message header % x", msg[:20])
	}
}

// TestNetlinkKernel talks to the real kernel: the generic netlink
// controller resolves its own family, and an unknown family is ENOENT.
func TestNetlinkKernel(t *testing.T) {
	c, err := dialGenl()
	if err != nil {
		testutil.Skip(t, "netlink", "no generic netlink socket: %v", err)
	}
	defer c.Close()
	id, err := c.family("nlctrl")
	if err != nil || id != genlIDCtrl {
		t.Fatalf("nlctrl: %d %v", id, err)
	}
	if _, err := c.family("nosuchfam"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("unknown family: %v", err)
	}
}

// TestNewNBDUnsupported: on a machine without the nbd module (whatever this
// one has: the test points New at a module path and a modprobe that do not
// exist, so it also never loads a module), kernel NBD is unsupported and
// auto chooses nbdfuse. TestKernelNBD covers a machine with the module.
func TestNewNBDUnsupported(t *testing.T) {
	if _, err := New("iscsi", Options{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown kind: %v", err)
	}
	defer func(m, p string) { nbdModule, modprobe = m, p }(nbdModule, modprobe)
	nbdModule = filepath.Join(t.TempDir(), "sys", "module", "nbd")
	modprobe = filepath.Join(t.TempDir(), "modprobe")
	_, err := New(KindNBD, Options{StateDir: t.TempDir()})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("New(nbd) = %v, want ErrUnsupported", err)
	}
	t.Logf("New(nbd): %v", err)
	_, err = New(KindNBD, Options{StateDir: t.TempDir(), NoModprobe: true})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("New(nbd, NoModprobe) = %v", err)
	}
	testutil.NeedPath(t, "/dev/fuse")
	testutil.NeedPath(t, "/dev/loop-control")
	testutil.NeedCommands(t, "nbdfuse", "losetup")
	a, err := New(KindAuto, Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatalf("New(auto): %v", err)
	}
	if a.Kind() != KindNbdfuse {
		t.Fatalf("auto chose %s", a.Kind())
	}
}
