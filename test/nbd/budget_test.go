package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/internal/testutil"
	"github.com/viperblock/viperblock-csi/pkg/driver"
	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
)

// TestNodeMemoryBudget: volume servers started as the node starts them,
// each with memory= its share of a node's memory budget (the budget
// divided by MaxVolumesPerNode, here the number of servers), stay within
// the budget together while every one of them is written concurrently,
// several times its pending limit with no FLUSH, then read back whole (so
// its read cache fills): every write and read succeeds (writers wait at
// the pending limit, never fail) and
//
//   - the servers' summed proportional set size (Pss: private pages, and
//     shared ones divided among the processes sharing them, such as the
//     plugin's code), sampled every 20 ms, stays within the budget;
//   - the sum of every server's peak private memory (VmHWM - RssFile, as
//     if all peaks coincided) plus one copy of the shared code stays
//     within the budget.
//
// The budget includes each server's fixed memory (nbdkit, the Go runtime:
// the plugin's ProcessOverhead) and its nbdkit threads' request buffers,
// so no allowance is added on top. Each volume has 4 connections of 2
// nbdkit threads: the 8 request buffers of the node's one connection with
// DefaultNbdkitThreads, and 4 writers at once (the test's client sends one
// request at a time); requests are the plugin's advertised maximum under a
// budget, 1 MiB, so every thread's buffer reaches its largest.
//
// VB_BUDGET_VOLUMES sets the number of servers (default 6, light enough
// for the go tier; 64 is the target: make bench-budget);
// VB_BUDGET_ENV adds environment variables (space-separated) to the
// servers'.
func TestNodeMemoryBudget(t *testing.T) {
	needTools(t, "nbdkit", "nbdinfo", "chattr")
	testutil.NeedRoot(t) // chattr +i
	volumes := 6
	if s := os.Getenv("VB_BUDGET_VOLUMES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("VB_BUDGET_VOLUMES=%q", s)
		}
		volumes = n
	}
	plugin := testutil.Plugin(t)
	dir := t.TempDir()
	store := "file://" + filepath.Join(dir, "store")
	opts := driver.Options{MemoryBudget: int64(volumes) * driver.VolumeMemory, MaxVolumesPerNode: int64(volumes)}
	share := opts.VolumeMemory()
	const (
		size    = 96 << 20 // per volume
		conns   = 4        // connections per volume, each writing its quarter
		threads = driver.DefaultNbdkitThreads / conns
		req     = 1 << 20 // write request: the plugin's largest under memory=
		passes  = 2
	)
	t.Logf("%d servers, budget %d MiB, memory=%d MiB each, %d connections of %d threads; %d MiB written to each (%d passes), then read back",
		volumes, opts.MemoryBudget>>20, share>>20, conns, threads, passes*size>>20, passes)

	servers := make([]*nbdkit.Server, volumes)
	var startWG sync.WaitGroup
	startErr := make(chan error, volumes)
	for i := range servers {
		startWG.Add(1)
		go func(i int) {
			defer startWG.Done()
			srv, err := nbdkit.Start(context.Background(), nbdkit.Config{
				Plugin: plugin, Socket: filepath.Join(dir, fmt.Sprintf("v%d.sock", i)),
				Params: []string{fmt.Sprintf("volume=v%d", i), "wal_dir=" + filepath.Join(dir, "wal"), fmt.Sprintf("size=%d", size),
					fmt.Sprintf("memory=%d", share), fmt.Sprintf("connections=%d", conns)},
				Threads: threads,
				Env:     append([]string{"VBLOCK_STORE=" + store}, strings.Fields(os.Getenv("VB_BUDGET_ENV"))...),
				Output:  &testLog{t: t, prefix: fmt.Sprintf("v%d: ", i), buf: &bytes.Buffer{}},
				Ready:   5 * time.Minute,
			})
			if err != nil {
				startErr <- fmt.Errorf("server %d: %w", i, err)
				return
			}
			servers[i] = srv
		}(i)
	}
	startWG.Wait()
	t.Cleanup(func() {
		for _, s := range servers {
			if s != nil {
				s.Kill()
				<-s.Done()
			}
		}
	})
	close(startErr)
	for err := range startErr {
		t.Fatal(err)
	}

	// Sample the servers' memory while they work.
	stop := make(chan struct{})
	var peakPss, peakRSS int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			var pss, rss int64
			for _, s := range servers {
				pss += procField(filepath.Join("/proc", strconv.Itoa(s.Pid()), "smaps_rollup"), "Pss:")
				rss += procField(filepath.Join("/proc", strconv.Itoa(s.Pid()), "status"), "VmRSS:")
			}
			peakPss, peakRSS = max(peakPss, pss), max(peakRSS, rss)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	// The servers advertise the request size the clients use, the largest
	// that their memory share budgets buffers for.
	if out := run(t, "nbdinfo", "--json", servers[0].URI()); !strings.Contains(out, fmt.Sprintf(`"block_size_maximum": %d,`, req)) {
		t.Fatalf("server 0 does not advertise a maximum request of %d bytes:\n%s", req, out)
	}

	// The store is made immutable first, so that no drain succeeds and
	// every volume's pending writes reach their limit, the most memory a
	// volume holds for them; once all writers wait, it is made writable
	// again and the drains catch up.
	storeDir := filepath.Join(dir, "store")
	chattr := func(flag string) error {
		if out, err := exec.Command("chattr", "-R", flag, storeDir).CombinedOutput(); err != nil {
			return fmt.Errorf("chattr -R %s %s: %v: %s", flag, storeDir, err, out)
		}
		return nil
	}
	if err := chattr("+i"); err != nil {
		testutil.Skip(t, "immutable-files", "the store cannot be made read-only: %v", err)
	}
	t.Cleanup(func() { _ = chattr("-i") }) // so that the test's directory can be removed
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, volumes*conns)
	written := make([]atomic.Int64, volumes)
	for i, s := range servers {
		for c := 0; c < conns; c++ {
			wg.Add(1)
			go func(i, c int, s *nbdkit.Server) {
				defer wg.Done()
				if err := budgetClient(s.Socket(), i, c, size/conns, req, passes, &written[i]); err != nil {
					errs <- fmt.Errorf("volume %d, connection %d: %w", i, c, err)
				}
			}(i, c, s)
		}
	}
	stalled := func() []int64 { // each volume's bytes written, once none moved for a second
		last := make([]int64, volumes)
		still := time.Time{}
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			moved := false
			for i := range last {
				n := written[i].Load()
				moved = moved || n != last[i]
				last[i] = n
			}
			switch {
			case moved:
				still = time.Time{}
			case still.IsZero():
				still = time.Now()
			case time.Since(still) >= time.Second:
				return last
			}
		}
		return nil
	}()
	if err := chattr("-i"); err != nil {
		t.Fatal(err)
	}
	if stalled == nil {
		t.Error("the writers did not stall within a minute with the store read-only")
	}
	for i, n := range stalled {
		if n >= passes*size {
			t.Errorf("volume %d: all %d MiB written with the store read-only: its writers never waited", i, n>>20)
		}
	}
	t.Logf("with the store read-only the writers stalled after %v, having written (MiB) %v", time.Since(start).Round(time.Millisecond), mibs(stalled))
	wg.Wait()
	took := time.Since(start)
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var sumAnonPeak, file int64
	for _, s := range servers {
		st := filepath.Join("/proc", strconv.Itoa(s.Pid()), "status")
		f := procField(st, "RssFile:")
		sumAnonPeak += procField(st, "VmHWM:") - f
		file = max(file, f)
	}
	const mib = 1 << 20
	t.Logf("%d servers, %d MiB written and read in %v: peak summed Pss %d MiB, peak summed VmRSS %d MiB (shared code counted %d times); summed private peaks %d MiB + shared code %d MiB; budget %d MiB",
		volumes, int64(volumes)*passes*size/mib, took.Round(time.Millisecond), peakPss/mib, peakRSS/mib, volumes, sumAnonPeak/mib, file/mib, opts.MemoryBudget/mib)
	if peakPss > opts.MemoryBudget {
		t.Errorf("the servers' summed Pss reached %d MiB, over the budget of %d MiB", peakPss/mib, opts.MemoryBudget/mib)
	}
	if sumAnonPeak+file > opts.MemoryBudget {
		t.Errorf("the servers' summed private peaks and shared code reached %d MiB, over the budget of %d MiB", (sumAnonPeak+file)/mib, opts.MemoryBudget/mib)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i, s := range servers {
		if err := s.Stop(ctx); err != nil {
			t.Errorf("server %d did not stop cleanly: %v", i, err)
		}
	}
}

// budgetClient writes a connection's part of a volume passes times, in
// req-byte requests without FLUSH, then reads it back and checks the last
// pass. Each 4 KiB block carries (volume, connection, pass, block).
func budgetClient(socket string, vol, conn int, part, req, passes int, written *atomic.Int64) error {
	cl, err := dial(socket)
	if err != nil {
		return err
	}
	defer cl.Close()
	base := conn * part
	buf := make([]byte, req)
	for pass := 0; pass < passes; pass++ {
		for off := 0; off < part; off += req {
			n := min(req, part-off)
			stamp(buf[:n], vol, conn, pass, base+off)
			if err := cl.WriteAt(buf[:n], uint64(base+off), false); err != nil {
				return fmt.Errorf("write pass %d at %d: %w", pass, base+off, err)
			}
			written.Add(int64(n))
		}
	}
	want := make([]byte, req)
	for off := 0; off < part; off += req {
		n := min(req, part-off)
		if err := cl.ReadAt(buf[:n], uint64(base+off)); err != nil {
			return fmt.Errorf("read at %d: %w", base+off, err)
		}
		stamp(want[:n], vol, conn, passes-1, base+off)
		if !bytes.Equal(buf[:n], want[:n]) {
			return fmt.Errorf("read at %d: not what the last pass wrote", base+off)
		}
	}
	return nil
}

func mibs(ns []int64) []int64 {
	out := make([]int64, len(ns))
	for i, n := range ns {
		out[i] = n >> 20
	}
	return out
}

func stamp(p []byte, vol, conn, pass, off int) {
	for b := 0; b < len(p); b += 4096 {
		blk := p[b:min(b+4096, len(p))]
		for i := range blk {
			blk[i] = byte(pass + vol)
		}
		binary.LittleEndian.PutUint64(blk[0:], uint64(vol))
		binary.LittleEndian.PutUint64(blk[8:], uint64(conn))
		binary.LittleEndian.PutUint64(blk[16:], uint64(pass))
		binary.LittleEndian.PutUint64(blk[24:], uint64(off+b))
	}
}

// procField reads a "Name:   N kB" field of a /proc file, in bytes (0 if
// absent: the process is gone).
func procField(path, name string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name); ok {
			fs := strings.Fields(rest)
			if len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}
