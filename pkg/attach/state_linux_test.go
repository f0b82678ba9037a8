//go:build linux

package attach

import (
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// A crash at each point of a state write (before each mkdir, create,
// write, fsync, rename and directory fsync, and after the last) leaves the
// old record or the new one, never a torn or missing file; once the write
// returned, the new one.
func TestStateFileCrashPoints(t *testing.T) {
	const dir = "/attach/vol-1"
	oldSt := func() *state {
		return &state{Kind: KindNbdfuse, ID: "vol-1", Socket: "/s.sock", Size: 1 << 20, Loop: "/dev/loop3", PID: 10}
	}
	newSt := func() *state {
		return &state{Kind: KindNbdfuse, ID: "vol-1", Socket: "/s.sock", Size: 2 << 20, Loop: "/dev/loop3", PID: 11, ExportSize: 4 << 20}
	}
	for _, first := range []bool{false, true} {
		for seed := int64(1); seed <= 4; seed++ {
			points := 0
			for at := 0; ; at++ {
				mem := vfs.NewMem()
				if !first {
					if err := writeStateFile(mem, dir, oldSt()); err != nil {
						t.Fatal(err)
					}
				}
				c := vfs.NewCrasher(mem, at, rand.New(rand.NewSource(seed*100+int64(at))))
				werr := writeStateFile(c.FS(), dir, newSt())
				after := c.Crashed()
				done := after == nil
				if done {
					if werr != nil {
						t.Fatalf("seed %d: write without a crash: %v", seed, werr)
					}
					after = mem.CrashClone(rand.New(rand.NewSource(seed)))
				} else if !errors.Is(werr, vfs.ErrCrashed) {
					t.Fatalf("seed %d, crash before op %d: write returned %v", seed, at, werr)
				}
				where := fmt.Sprintf("seed %d, first write %v, ops before the crash: %s", seed, first, strings.Join(c.Ops(), "; "))
				st, err := readStateFile(after, dir+"/state.json", "vol-1")
				switch {
				case err != nil:
					t.Fatalf("%s: record unreadable after the crash: %v", where, err)
				case st == nil && (!first || done):
					t.Fatalf("%s: record gone after the crash", where)
				case st == nil:
				case st.Size == 1<<20 && st.PID == 10 && !done:
				case st.Size == 2<<20 && st.PID == 11 && st.ExportSize == 4<<20:
				default:
					t.Fatalf("%s: neither the old nor the new record: %+v", where, st)
				}
				if done {
					break
				}
				points++
			}
			if points < 6 {
				t.Fatalf("only %d crash points: the write no longer goes through create, write, fsync, rename, directory fsync", points)
			}
		}
	}
}

// A torn or corrupt record reads back as an error naming the file, never
// as a zero record or a panic.
func TestStateFileCorrupt(t *testing.T) {
	const dir = "/attach/vol-1"
	const path = dir + "/state.json"
	mem := vfs.NewMem()
	if err := writeStateFile(mem, dir, &state{Kind: KindNBD, ID: "vol-1", Index: 3, Size: 4096}); err != nil {
		t.Fatal(err)
	}
	good, err := vfs.ReadFile(mem, path)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, b []byte) {
		t.Helper()
		if err := vfs.WriteFileAtomic(mem, path, b); err != nil {
			t.Fatal(err)
		}
		st, err := readStateFile(mem, path, "vol-1")
		if err == nil {
			t.Fatalf("%s: read back as %+v, want an error", what, st)
		}
		if !strings.Contains(err.Error(), path) {
			t.Fatalf("%s: error %q does not name %s", what, err, path)
		}
	}
	body := strings.TrimSpace(string(good))
	for n := 0; n < len(body); n++ {
		check(fmt.Sprintf("prefix of %d bytes", n), good[:n])
	}
	check("another ID's", []byte(strings.Replace(string(good), `"vol-1"`, `"vol-2"`, 1)))
	check("unknown kind", []byte(strings.Replace(string(good), `"nbd"`, `"nbdx"`, 1)))
	check("zeros", make([]byte, len(good)))
	check("empty object", []byte("{}"))
}
