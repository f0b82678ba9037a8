package viperblock_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Extents never reports written data as a hole while drains move blocks
// from memory into the map. (Clients such as nbdcopy skip the ranges block
// status calls holes, so a hole here reads back as zeros there.)
func TestExtentsDuringDrains(t *testing.T) {
	const size = 32 << 20
	o := opts(t)
	o.DrainInterval = time.Millisecond
	o.DrainBytes = 256 << 10
	v := mustCreate(t, backend.NewMem(), "v", size, o)
	defer v.Close()
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i%251 + 1)
	}
	var written atomic.Int64 // bytes written from offset 0, all acknowledged
	done := make(chan struct{})
	go func() {
		defer close(done)
		for off := int64(0); off < size; off += int64(len(buf)) {
			if _, err := v.WriteAt(buf, off); err != nil {
				t.Error(err)
				return
			}
			written.Store(off + int64(len(buf)))
		}
	}()
	checks := 0
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true // one more check, then stop
		default:
		}
		w := written.Load()
		if w > 0 {
			ext, err := v.Extents(0, w)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ext {
				if e.Zero {
					t.Fatalf("check %d: [%d, +%d) of the %d bytes written reported as a hole (stats %+v)", checks, e.Offset, e.Length, w, v.Stats())
				}
			}
			checks++
		}
	}
	if w := written.Load(); w != size {
		t.Fatalf("the writer stopped after %d of %d bytes", w, size)
	}
	if err := v.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	ext, err := v.Extents(0, size)
	if err != nil || len(ext) != 1 || ext[0].Zero {
		t.Fatalf("after the last drain: %v %v", ext, err)
	}
	t.Logf("%d Extents calls during %d drains", checks, v.Stats().Drains)
}
