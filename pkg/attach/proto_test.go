package attach

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
)

// startNbdkit runs `nbdkit [options] plugin [params]` (args) on a Unix
// socket until the test ends and returns the socket once it serves.
func startNbdkit(t *testing.T, args ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	if err := tryServeNbdkit(t, nbdkit.Config{Socket: sock}, args); err != nil {
		t.Fatal(err)
	}
	return sock
}

// startNbdkitTCP runs nbdkit on a free port of 127.0.0.1 and returns its
// address. The port is free when picked but may be taken by another process
// before nbdkit binds it (other test binaries run alongside): nbdkit then
// exits, and another port is tried.
func startNbdkitTCP(t *testing.T, args ...string) string {
	t.Helper()
	var err error
	for try := 0; try < 5; try++ {
		var l net.Listener
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		err = tryServeNbdkit(t, nbdkit.Config{Addr: addr}, args)
		if err == nil {
			return addr
		}
		if !errors.Is(err, nbdkit.ErrExited) {
			break
		}
		t.Logf("%v; trying another port", err)
	}
	t.Fatal(err)
	return ""
}

// tryServeNbdkit starts nbdkit (package nbdkit) where cfg says, with args
// split into options, plugin and parameters, and stops it when the test
// ends. It returns an error wrapping nbdkit.ErrExited if nbdkit exited
// before serving.
func tryServeNbdkit(t *testing.T, cfg nbdkit.Config, args []string) error {
	t.Helper()
	testutil.NeedCommands(t, "nbdkit")
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		cfg.Args, args = append(cfg.Args, args[0]), args[1:]
	}
	if len(args) == 0 {
		t.Fatal("no nbdkit plugin")
	}
	cfg.Plugin, cfg.Params, cfg.Ready = args[0], args[1:], time.Minute
	s, err := nbdkit.Start(context.Background(), cfg)
	if err != nil {
		return err
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if s.Stop(ctx) != nil {
			s.Kill()
			<-s.Done()
		}
	})
	return nil
}

func TestProbeNbdkit(t *testing.T) {
	ctx := context.Background()
	sock := startNbdkit(t, "memory", "64M")
	info, err := Probe(ctx, Export{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("memory 64M: %+v", info)
	if info.Size != 64<<20 {
		t.Errorf("size %d, want %d", info.Size, 64<<20)
	}
	for _, f := range []uint16{FlagHasFlags, FlagSendFlush, FlagSendTrim, FlagSendWriteZeroes, FlagCanMultiConn} {
		if info.Flags&f == 0 {
			t.Errorf("flags %#x lack %#x", info.Flags, f)
		}
	}
	if info.ReadOnly() {
		t.Error("read-only")
	}
	// A named export: nbdkit's plugins serve any name.
	if info, err := Probe(ctx, Export{Socket: sock, Name: "vol-1"}); err != nil || info.Size != 64<<20 {
		t.Errorf("named export: %+v %v", info, err)
	}

	ro := startNbdkit(t, "-r", "memory", "1M")
	info, err = Probe(ctx, Export{Socket: ro})
	if err != nil {
		t.Fatal(err)
	}
	if !info.ReadOnly() || info.Size != 1<<20 {
		t.Errorf("nbdkit -r memory 1M: %+v", info)
	}

	// A server that states its block sizes.
	bsock := startNbdkit(t, "--filter=blocksize-policy", "memory", "1M", "blocksize-minimum=4096", "blocksize-preferred=65536", "blocksize-maximum=1048576")
	info, err = Probe(ctx, Export{Socket: bsock})
	if err != nil {
		t.Fatalf("Probe of nbdkit with the blocksize-policy filter: %v", err)
	}
	if info.MinBlock != 4096 || info.PrefBlock != 65536 || info.MaxBlock != 1<<20 {
		t.Errorf("block sizes %+v", info)
	}
}

func TestProbeErrors(t *testing.T) {
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "none.sock")
	_, err := Probe(ctx, Export{Socket: missing})
	if err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing socket: %v", err)
	}
	if _, err := Probe(ctx, Export{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("no address: %v", err)
	}
	// Not an NBD server.
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "x.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			c.Close()
		}
	}()
	if _, err := Probe(ctx, Export{Socket: l.Addr().String()}); !errors.Is(err, errNBDProto) {
		t.Errorf("not NBD: %v", err)
	}
	// A server that accepts and says nothing until the test ends: ctx
	// bounds the wait. The check is loose, as a loaded machine may be slow
	// to act on the deadline; without it Probe would wait its own 30 s.
	l2, err := net.Listen("unix", filepath.Join(t.TempDir(), "y.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		c, err := l2.Accept()
		if err == nil {
			<-quit
			c.Close()
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Probe(cctx, Export{Socket: l2.Addr().String()}); err == nil || time.Since(start) > 15*time.Second {
		t.Errorf("silent server: %v after %v", err, time.Since(start))
	}
}

// TestHandshakeTransmission checks that handshake leaves the connection in
// the transmission phase with simple replies, as the kernel needs: a write
// and a read go through by hand.
func TestHandshakeTransmission(t *testing.T) {
	ctx := context.Background()
	sock := startNbdkit(t, "memory", "1M")
	c, info, err := handshake(ctx, Export{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if info.Size != 1<<20 {
		t.Fatalf("size %d", info.Size)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req := func(typ uint16, cookie uint64, off uint64, n uint32, data []byte) {
		b := make([]byte, 28, 28+len(data))
		binary.BigEndian.PutUint32(b, nbdRequestMagic)
		binary.BigEndian.PutUint16(b[6:], typ)
		binary.BigEndian.PutUint64(b[8:], cookie)
		binary.BigEndian.PutUint64(b[16:], off)
		binary.BigEndian.PutUint32(b[24:], n)
		if _, err := c.Write(append(b, data...)); err != nil {
			t.Fatal(err)
		}
	}
	reply := func(cookie uint64, n int) []byte {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			t.Fatal(err)
		}
		if m := binary.BigEndian.Uint32(h[:]); m != 0x67446698 {
			t.Fatalf("reply magic %#x (structured replies negotiated?)", m)
		}
		if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
			t.Fatalf("error %d", e)
		}
		if got := binary.BigEndian.Uint64(h[8:]); got != cookie {
			t.Fatalf("cookie %d, want %d", got, cookie)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	data := bytes.Repeat([]byte("viperblock!"), 400)[:4096]
	req(1 /* write */, 7, 8192, 4096, data)
	reply(7, 0)
	req(0 /* read */, 8, 8192, 4096, nil)
	if got := reply(8, 4096); !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	sendDisconnect(c)
}

// fakeServer serves one connection of a fixed-newstyle server that knows
// only NBD_OPT_EXPORT_NAME (replies ERR_UNSUP to everything else).
func fakeServer(t *testing.T, c net.Conn, size uint64, flags uint16, noZeroes bool) {
	defer c.Close()
	hf := uint16(nbdFlagFixedNewstyle)
	if noZeroes {
		hf |= nbdFlagNoZeroes
	}
	var g [18]byte
	binary.BigEndian.PutUint64(g[:], nbdMagic)
	binary.BigEndian.PutUint64(g[8:], nbdOptMagic)
	binary.BigEndian.PutUint16(g[16:], hf)
	c.Write(g[:])
	var cf [4]byte
	if _, err := io.ReadFull(c, cf[:]); err != nil {
		return
	}
	for {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		opt := binary.BigEndian.Uint32(h[8:])
		data := make([]byte, binary.BigEndian.Uint32(h[12:]))
		io.ReadFull(c, data)
		if opt == nbdOptExportName {
			b := make([]byte, 10, 134)
			binary.BigEndian.PutUint64(b, size)
			binary.BigEndian.PutUint16(b[8:], flags)
			if binary.BigEndian.Uint32(cf[:])&nbdFlagNoZeroes == 0 {
				b = append(b, make([]byte, 124)...)
			}
			c.Write(b)
			io.Copy(io.Discard, c)
			return
		}
		var r [20]byte
		binary.BigEndian.PutUint64(r[:], nbdReplyMagic)
		binary.BigEndian.PutUint32(r[8:], opt)
		binary.BigEndian.PutUint32(r[12:], nbdRepErrUnsup)
		c.Write(r[:])
	}
}

func TestNegotiateExportNameFallback(t *testing.T) {
	for _, nz := range []bool{false, true} {
		a, b := net.Pipe()
		go fakeServer(t, b, 12345*512, FlagHasFlags|FlagSendFlush, nz)
		a.SetDeadline(time.Now().Add(5 * time.Second))
		info, inTx, err := negotiate(a, "x", false)
		a.Close()
		if err != nil || !inTx || info.Size != 12345*512 || info.Flags != FlagHasFlags|FlagSendFlush {
			t.Errorf("noZeroes=%v: %+v inTransmission=%v %v", nz, info, inTx, err)
		}
	}
}
