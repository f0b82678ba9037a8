package driver

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// A crash at each point of a state write (before each create, write,
// fsync, rename and directory fsync, and after the last) leaves the old
// state or the new one, never a torn or missing file; and once the write
// returned, the new one. Printed seeds reproduce a failure.
func TestStateFileCrashPoints(t *testing.T) {
	id := volumeID{Store: "default", Vol: "pvc-1"}
	const path = "/state/volumes/default.pvc-1/state.json"
	oldSt := func() *volState {
		return &volState{StagingPath: "/staging", FsType: "ext4", Size: 1 << 20, Staged: true}
	}
	newSt := func() *volState {
		return &volState{StagingPath: "/staging", FsType: "ext4", Size: 2 << 20, Staged: true, Targets: []string{"/target"}, Epoch: 7}
	}
	for _, first := range []bool{false, true} { // first: no old file
		for seed := int64(1); seed <= 4; seed++ {
			points := 0
			for at := 0; ; at++ {
				mem := vfs.NewMem()
				if !first {
					if err := writeVolState(mem, path, id, oldSt()); err != nil {
						t.Fatal(err)
					}
				}
				c := vfs.NewCrasher(mem, at, rand.New(rand.NewSource(seed*100+int64(at))))
				werr := writeVolState(c.FS(), path, id, newSt())
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
				st, ok, err := readVolState(after, path, id)
				where := func() string {
					return fmt.Sprintf("seed %d, ops before the crash: %s", seed, strings.Join(c.Ops(), "; "))
				}
				switch {
				case err != nil:
					t.Fatalf("%s: state unreadable after the crash: %v", where(), err)
				case !ok && (!first || done):
					t.Fatalf("%s: state file gone after the crash", where())
				case ok && st.Size == 1<<20 && !done:
				case ok && st.Size == 2<<20 && slices.Equal(st.Targets, []string{"/target"}) && st.Epoch == 7:
				case !ok:
				default:
					t.Fatalf("%s: neither the old nor the new state: %+v", where(), st)
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

// A torn or corrupt state file reads back as a clear error naming the
// file, never as a zero state or a panic: every prefix of a good file, and
// files with a byte changed.
func TestStateFileCorrupt(t *testing.T) {
	id := volumeID{Store: "default", Vol: "pvc-1"}
	const path = "/s/state.json"
	mem := vfs.NewMem()
	if err := writeVolState(mem, path, id, &volState{StagingPath: "/staging", Staged: true, Size: 4096}); err != nil {
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
		st, ok, err := readVolState(mem, path, id)
		if err == nil {
			t.Fatalf("%s: read back as %+v (ok %v), want an error", what, st, ok)
		}
		if !errors.Is(err, errCorruptState) || !strings.Contains(err.Error(), path) {
			t.Fatalf("%s: error %q does not say the state file %s is corrupt", what, err, path)
		}
	}
	for n := 0; n < len(good)-1; n++ { // the last byte is the closing brace's newline at most
		if strings.TrimSpace(string(good[:n])) == strings.TrimSpace(string(good)) {
			continue
		}
		check(fmt.Sprintf("prefix of %d bytes", n), good[:n])
	}
	check("another volume's", []byte(strings.Replace(string(good), "pvc-1", "pvc-2", 1)))
	check("another version", []byte(strings.Replace(string(good), `"version": 1`, `"version": 9`, 1)))
	check("zeros", make([]byte, len(good)))
	check("empty object", []byte("{}"))
}
