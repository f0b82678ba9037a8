package viperblock_test

import (
	"context"
	"fmt"
	"math/rand"
	"testing"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// Extents agrees with the data, before and after a drain (the drained case
// takes the map-only fast path), for random ranges including unaligned ones.
func TestExtentsMatchData(t *testing.T) {
	ctx := context.Background()
	v := mustCreate(t, backend.NewMem(), "v", 256*vb.BlockSize, opts(t))
	defer v.Close()
	rng := rand.New(rand.NewSource(7))
	for i := 0; i < 60; i++ {
		b := rng.Intn(256)
		n := 1 + rng.Intn(6)
		if b+n > 256 {
			n = 256 - b
		}
		if rng.Intn(4) == 0 {
			v.Trim(int64(b)*vb.BlockSize, int64(n)*vb.BlockSize)
		} else {
			v.WriteAt(fill(byte(1+rng.Intn(200)), n*vb.BlockSize), int64(b)*vb.BlockSize)
		}
	}
	check := func(stage string) {
		data := readAll(t, v)
		for i := 0; i < 200; i++ {
			off := rng.Int63n(v.Size())
			l := rng.Int63n(v.Size() - off + 1)
			ext, err := v.Extents(off, l)
			if err != nil {
				t.Fatal(err)
			}
			pos := off
			for _, e := range ext {
				if e.Offset != pos {
					t.Fatalf("%s: extents %v do not tile [%d,+%d)", stage, ext, off, l)
				}
				if e.Zero {
					for _, c := range data[e.Offset : e.Offset+e.Length] {
						if c != 0 {
							t.Fatalf("%s: hole %v holds data", stage, e)
						}
					}
				}
				pos += e.Length
			}
			if pos != off+l {
				t.Fatalf("%s: extents %v end at %d, want %d", stage, ext, pos, off+l)
			}
		}
	}
	check("undrained")
	if err := v.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	check("drained")
	ext, _ := v.Extents(0, v.Size())
	if len(ext) < 3 {
		t.Fatalf("suspiciously few extents: %s", fmt.Sprint(ext))
	}
}
