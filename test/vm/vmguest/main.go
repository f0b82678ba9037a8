//go:build linux

// Command vmguest is the guest side of the kernel NBD checks of
// test/vm/run.sh. It runs as root inside the QEMU guest, built static
// (CGO_ENABLED=0), and prints one line per check:
//
//	CHECK <name> ok <seconds>
//	CHECK <name> FAIL <seconds> <error>
//
// When the host has to act it prints "HOST <request>" and reads the host's
// answer, one line, from stdin (the serial console): "ok" or an error.
//
//	vmguest knbd ADDR
//
// attaches the export that nbdkit serves at ADDR (the host's nbdkit with
// the viperblock plugin, TCP) as /dev/nbdX through pkg/attach's kernel NBD
// attacher (netlink), makes an ext4 filesystem, writes, unmounts, detaches,
// attaches again; then the host kills nbdkit (kill -9) and a write is
// issued, which must wait; the host starts nbdkit again on the same WAL
// directory and Reconnect hands the kernel new connections: the waiting
// write completes and every file reads back. It ends by printing
// "FILE <path> <sha256>" for each file, so the host can check the volume
// once served no more.
//
//	vmguest csi NODE PLUGIN
//
// runs the CSI node plugin binary NODE (cmd/node, static) in the guest with
// the kernel NBD attacher, nbdkit and PLUGIN, on a file store in the
// guest's tmpfs, and drives it over its gRPC socket: NodeStage, NodePublish,
// I/O, NodeUnpublish, NodeUnstage, then staging again to find the data, for
// an ext4 volume and for a raw block volume (what KubeVirt consumes).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/attach"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vmguest knbd ADDR | csi NODE PLUGIN")
		os.Exit(2)
	}
	var c checker
	switch {
	case os.Args[1] == "knbd" && len(os.Args) == 3:
		knbd(&c, os.Args[2])
	case os.Args[1] == "csi" && len(os.Args) == 4:
		csiNode(&c, os.Args[2], os.Args[3])
	default:
		fmt.Fprintln(os.Stderr, "usage: vmguest knbd ADDR | csi NODE PLUGIN")
		os.Exit(2)
	}
	if c.failed > 0 {
		os.Exit(1)
	}
}

// checker runs named checks and prints their results. After the first
// failure the remaining checks of the sequence are skipped (each depends on
// the previous ones) and reported as failed.
type checker struct {
	failed int
}

func (c *checker) check(name string, f func() error) bool {
	if c.failed > 0 {
		fmt.Printf("CHECK %s FAIL 0.0 skipped after an earlier failure\n", name)
		c.failed++
		return false
	}
	t0 := time.Now()
	err := f()
	d := time.Since(t0).Seconds()
	if err != nil {
		fmt.Printf("CHECK %s FAIL %.1f %s\n", name, d, strings.ReplaceAll(err.Error(), "\n", " | "))
		c.failed++
		return false
	}
	fmt.Printf("CHECK %s ok %.1f\n", name, d)
	return true
}

var stdin = bufio.NewReader(os.Stdin)

// host asks the host to do something and waits for its answer.
func host(req string, timeout time.Duration) error {
	fmt.Printf("HOST %s\n", req)
	line := make(chan string, 1)
	go func() {
		s, _ := stdin.ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s != "ok" {
			return fmt.Errorf("host: %q", s)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("no answer from the host to %q within %s", req, timeout)
	}
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// writeFiles writes n files of size bytes of random data under dir, named
// prefix0.., and records their checksums in sums.
func writeFiles(dir, prefix string, n, size int, sums map[string]string) error {
	for i := 0; i < n; i++ {
		b := make([]byte, size)
		rand.Read(b)
		p := filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		s := sha256.Sum256(b)
		sums[p] = hex.EncodeToString(s[:])
	}
	return nil
}

// verifyFiles reads every file in sums back, after dropping the page cache
// so that the reads reach the server.
func verifyFiles(sums map[string]string) error {
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return err
	}
	for p, want := range sums {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		s := sha256.Sum256(b)
		if got := hex.EncodeToString(s[:]); got != want {
			return fmt.Errorf("%s: sha256 %s, wrote %s", p, got, want)
		}
	}
	return nil
}

func isMounted(path string) bool {
	b, _ := os.ReadFile("/proc/mounts")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == path {
			return true
		}
	}
	return false
}

// connected reports whether the kernel NBD device has a connection (its
// sysfs pid attribute exists while configured).
func connected(dev string) bool {
	_, err := os.Stat(filepath.Join("/sys/block", filepath.Base(dev), "pid"))
	return err == nil
}

func knbd(c *checker, addr string) {
	ctx := context.Background()
	att, err := attach.New(attach.KindNBD, attach.Options{StateDir: "/run/vb-attach", NoModprobe: true,
		DeadConnTimeout: 2 * time.Minute, Timeout: 30 * time.Second})
	if err != nil {
		c.check("kernel NBD attacher", func() error { return err })
		return
	}
	exp := attach.Export{Addr: addr, ID: "vm-knbd"}
	mnt := "/mnt/knbd"
	os.MkdirAll(mnt, 0o755)
	sums := map[string]string{}
	var dev attach.Device

	c.check("knbd: attach over TCP (netlink)", func() error {
		var err error
		if dev, err = att.Attach(ctx, exp); err != nil {
			return err
		}
		if dev.Kind != attach.KindNBD || !strings.HasPrefix(dev.Path, "/dev/nbd") || !connected(dev.Path) {
			return fmt.Errorf("device %+v", dev)
		}
		fmt.Printf("attached %s (%d bytes) to nbdkit at %s\n", dev.Path, dev.Size, addr)
		return nil
	})
	c.check("knbd: mkfs.ext4 + mount", func() error {
		if err := run("mkfs.ext4", "-q", dev.Path); err != nil {
			return err
		}
		return run("mount", "-t", "ext4", dev.Path, mnt)
	})
	c.check("knbd: write files + sync", func() error {
		if err := writeFiles(mnt, "a", 8, 1<<20, sums); err != nil {
			return err
		}
		return run("sync")
	})
	c.check("knbd: umount + detach", func() error {
		if err := run("umount", mnt); err != nil {
			return err
		}
		if err := att.Detach(ctx, exp.ID); err != nil {
			return err
		}
		if connected(dev.Path) {
			return fmt.Errorf("%s still connected after Detach", dev.Path)
		}
		if _, ok, err := att.Find(ctx, exp.ID); ok || err != nil {
			return fmt.Errorf("find after Detach: %v %v", ok, err)
		}
		return nil
	})
	c.check("knbd: reattach + mount + files intact", func() error {
		var err error
		if dev, err = att.Attach(ctx, exp); err != nil {
			return err
		}
		if err := run("mount", "-t", "ext4", dev.Path, mnt); err != nil {
			return err
		}
		return verifyFiles(sums)
	})

	// The server dies with the device attached and the filesystem mounted;
	// a write issued meanwhile waits (dead-connection timeout) and
	// completes once Reconnect has given the kernel the restarted server.
	c.check("knbd: host kills nbdkit (kill -9)", func() error { return host("kill-nbdkit", 2*time.Minute) })
	done := make(chan error, 1)
	var want string
	c.check("knbd: a write+fsync waits while the server is down", func() error {
		b := make([]byte, 1<<20)
		rand.Read(b)
		s := sha256.Sum256(b)
		want = hex.EncodeToString(s[:])
		go func() {
			f, err := os.Create(filepath.Join(mnt, "across-restart"))
			if err == nil {
				_, err = f.Write(b)
				if err == nil {
					err = f.Sync()
				}
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			done <- err
		}()
		select {
		case err := <-done:
			return fmt.Errorf("the write finished while the server was down: %v", err)
		case <-time.After(2 * time.Second):
			return nil
		}
	})
	c.check("knbd: host restarts nbdkit (same WAL dir)", func() error { return host("start-nbdkit", 2*time.Minute) })
	c.check("knbd: Reconnect, the waiting write completes", func() error {
		rc, ok := att.(attach.Reconnecter)
		if !ok {
			return errors.New("the kernel NBD attacher is not a Reconnecter")
		}
		if _, err := rc.Reconnect(ctx, exp); err != nil {
			return err
		}
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("the write failed: %v", err)
			}
		case <-time.After(90 * time.Second):
			return errors.New("the write still waits 90s after Reconnect")
		}
		sums[filepath.Join(mnt, "across-restart")] = want
		return nil
	})
	c.check("knbd: every file reads back after the restart", func() error { return verifyFiles(sums) })
	c.check("knbd: umount + detach", func() error {
		if err := run("umount", mnt); err != nil {
			return err
		}
		if err := att.Detach(ctx, exp.ID); err != nil {
			return err
		}
		if connected(dev.Path) {
			return fmt.Errorf("%s still connected after Detach", dev.Path)
		}
		return nil
	})
	if c.failed == 0 {
		var paths []string
		for p := range sums {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		for _, p := range paths {
			fmt.Printf("FILE %s %s\n", strings.TrimPrefix(p, mnt), sums[p])
		}
	}
}
