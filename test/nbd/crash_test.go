package nbd

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestCrashKill9 kills nbdkit with SIGKILL right after a FLUSH returned,
// while two other connections keep writing, then restarts it on the same WAL
// directory and checks that every write acknowledged before the FLUSH is
// there (and no block holds anything but a value some write gave it).
// VB_NBD_CRASH_ITERS sets the number of rounds (default 20).
func TestCrashKill9(t *testing.T) {
	iters := 20
	if testing.Short() {
		iters = 4
	}
	if v, err := strconv.Atoi(os.Getenv("VB_NBD_CRASH_ITERS")); err == nil && v > 0 {
		iters = v
	}
	const (
		size    = 32 << 20
		blocks  = size / 4096
		writers = 2
	)
	h := newHarness(t)
	r := newRand(seed(t))
	// hist[b] is every tag block b may hold: hist[b][0] the last value
	// known durable, then the values written since, in order. A block's
	// writes all come from one writer (writer k owns one part of the
	// volume), so this order is the order the server saw them in.
	hist := make([][]uint64, blocks)
	for b := range hist {
		hist[b] = []uint64{0}
	}
	var nextTag uint64
	params := []string{fmt.Sprintf("size=%d", size)}
	for it := 0; it < iters; it++ {
		p := params
		if it%2 == 1 {
			// Drain constantly, so some kills land in the middle of a drain.
			p = append(p, "drain_interval=10ms")
		}
		s := h.serve("wal", p...)
		checkCrashState(t, s, hist, it)

		// Write on `writers` connections until told to stop; a third
		// connection flushes at a random moment and the server is killed
		// the moment the flush returns.
		var mu sync.Mutex // guards hist, nextTag and acked while writers run
		durableIdx := make([]int, blocks)
		// acked[k][b] is the hist index of writer k's last acknowledged
		// write to block b.
		acked := make([]map[int]int, writers)
		for k := range acked {
			acked[k] = map[int]int{}
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		seeds := make([]uint64, writers)
		for k := range seeds {
			seeds[k] = r.Uint64()
		}
		for k := 0; k < writers; k++ {
			c := s.dial()
			wg.Add(1)
			go func(k int, wr *rand.Rand) {
				defer wg.Done()
				lo, hi := k*blocks/writers, (k+1)*blocks/writers
				for {
					select {
					case <-stop:
						return
					default:
					}
					n := 1 + wr.IntN(16)
					b0 := lo + wr.IntN(hi-lo-n)
					trim := wr.IntN(10) == 0
					buf := make([]byte, n*4096)
					mu.Lock()
					for i := 0; i < n; i++ {
						tag := uint64(0)
						if !trim {
							nextTag++
							tag = nextTag
							fillBlock(buf[i*4096:(i+1)*4096], b0+i, tag)
						}
						hist[b0+i] = append(hist[b0+i], tag)
					}
					mu.Unlock()
					var err error
					if trim {
						err = c.Trim(uint64(b0)*4096, uint32(n*4096))
					} else {
						err = c.WriteAt(buf, uint64(b0)*4096, false)
					}
					if err != nil {
						return // the server was killed
					}
					mu.Lock()
					for i := 0; i < n; i++ {
						acked[k][b0+i] = len(hist[b0+i]) - 1
					}
					mu.Unlock()
				}
			}(k, newRand(seeds[k]))
		}
		fc := s.dial()
		for i := r.IntN(5); i >= 0; i-- {
			// Let writes run, then flush: what was acknowledged before the
			// flush started must survive. Not synchronisation: a random
			// point in the writers' stream to flush (and later crash) at.
			time.Sleep(time.Duration(r.IntN(30_000)) * time.Microsecond)
			mu.Lock()
			cut := make([]int, blocks)
			for _, m := range acked {
				for b, idx := range m {
					cut[b] = idx
				}
			}
			mu.Unlock()
			if err := fc.Flush(); err != nil {
				t.Fatalf("round %d: flush: %v", it, err)
			}
			if i == 0 {
				s.kill9()
			}
			for b, idx := range cut {
				durableIdx[b] = max(durableIdx[b], idx)
			}
		}
		close(stop)
		wg.Wait()
		for b := range hist {
			hist[b] = hist[b][durableIdx[b]:]
		}
	}
	// Finally: a clean stop drains everything, and a fresh WAL directory
	// sees exactly the state the last server had.
	s := h.serve("wal", params...)
	checkCrashState(t, s, hist, iters)
	s.stop()
	os.RemoveAll(s.walDir)
	checkCrashState(t, h.serve("wal-fresh"), hist, iters+1)
}

// checkCrashState reads every block and checks it against hist, then
// narrows hist to what was read.
func checkCrashState(t *testing.T, s *server, hist [][]uint64, round int) {
	t.Helper()
	c := s.dial()
	defer c.Close()
	buf := make([]byte, 1<<20)
	want := make([]byte, 4096)
	for b0 := 0; b0 < len(hist); b0 += len(buf) / 4096 {
		if err := c.ReadAt(buf, uint64(b0)*4096); err != nil {
			t.Fatalf("round %d: read: %v", round, err)
		}
		for i := 0; i < len(buf)/4096; i++ {
			b := b0 + i
			got := buf[i*4096 : (i+1)*4096]
			tag := binary.LittleEndian.Uint64(got)
			fillBlock(want, b, tag)
			if tag == 0 {
				clear(want)
			}
			if string(got) != string(want) {
				t.Fatalf("round %d: block %d is torn or corrupt (tag %d)", round, b, tag)
			}
			found := -1
			for j, h := range hist[b] {
				if h == tag {
					found = j
				}
			}
			if found < 0 {
				t.Fatalf("round %d: block %d holds tag %d; a flushed write was lost or an old value came back (allowed: %v)",
					round, b, tag, hist[b])
			}
			hist[b] = []uint64{tag}
		}
	}
}

// fillBlock writes block b's content for tag: the tag, the block number,
// then bytes derived from both.
func fillBlock(p []byte, b int, tag uint64) {
	binary.LittleEndian.PutUint64(p, tag)
	binary.LittleEndian.PutUint64(p[8:], uint64(b))
	x := tag*0x9E3779B97F4A7C15 ^ uint64(b)
	for i := 16; i < len(p); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
}
