package viperblock_test

// Resume-only opens (Options.ResumeOnly): a supervisor reopening a volume
// on its own initiative takes ownership back only from its own WAL, never
// from an owner that took the volume over meanwhile, even when the takeover
// lands between the open's read of the manifest and its epoch bump.

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

// dirFiles reads every file under dir except the lock, by relative path.
func dirFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == ".lock" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameFiles fails unless the two snapshots of a directory are identical.
func sameFiles(t *testing.T, what string, before, after map[string][]byte) {
	t.Helper()
	for k, b := range before {
		if a, ok := after[k]; !ok || !bytes.Equal(a, b) {
			t.Fatalf("%s: %s changed or vanished", what, k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Fatalf("%s: %s appeared", what, k)
		}
	}
}

// manifestBytes returns the volume's manifest as stored.
func manifestBytes(t *testing.T, s backend.Store, vol string) []byte {
	t.Helper()
	b, _, err := s.Get(context.Background(), vol+"/manifest")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// crashWithWAL opens vol in walDir, writes and flushes (nothing drained)
// and crashes, leaving a WAL that a reopen must replay.
func crashWithWAL(t *testing.T, s backend.Store, im *volImage, walDir string) {
	t.Helper()
	o := quietOpts(t)
	o.WALDir = walDir
	v, err := vb.Open(context.Background(), s, im.vol, o)
	if err != nil {
		t.Fatal(err)
	}
	im.writeFlush(t, v, 'a', 0, 8)
	vb.ForgetForTest(v)
}

func TestResumeOnly(t *testing.T) { forEachStore(t, testResumeOnly) }

func testResumeOnly(t *testing.T, newStore func(t *testing.T) backend.Store) {
	ctx := context.Background()
	s := newStore(t)
	im := volImage{vol: "resume"}
	if err := vb.CreateOnly(ctx, s, im.vol, imgBlocks*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	wa := t.TempDir()
	crashWithWAL(t, s, &im, wa)
	resume := quietOpts(t)
	resume.WALDir, resume.ResumeOnly = wa, true

	// No WAL directory, or one without an OWNER file: refused, nothing
	// created, the store untouched.
	before := manifestBytes(t, s, im.vol)
	missing := quietOpts(t)
	missing.WALDir, missing.ResumeOnly = filepath.Join(t.TempDir(), "none"), true
	if _, err := vb.Open(ctx, s, im.vol, missing); !errors.Is(err, vb.ErrNotOwner) || !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("resume without a WAL directory: %v, want ErrNotOwner (a kind of ErrFenced)", err)
	}
	if _, err := os.Stat(missing.WALDir); !os.IsNotExist(err) {
		t.Fatalf("a refused resume created its WAL directory: %v", err)
	}
	empty := quietOpts(t)
	empty.ResumeOnly = true
	if _, err := vb.Open(ctx, s, im.vol, empty); !errors.Is(err, vb.ErrNotOwner) {
		t.Fatalf("resume without an OWNER file: %v, want ErrNotOwner", err)
	}
	if !bytes.Equal(manifestBytes(t, s, im.vol), before) {
		t.Fatal("a refused resume changed the manifest")
	}

	// The WAL's own owner: resumes, replays, takes a new epoch.
	v, err := vb.Open(ctx, s, im.vol, resume)
	if err != nil {
		t.Fatalf("resume by the owner's WAL: %v", err)
	}
	if st := v.Stats(); st.Replayed == 0 || v.Epoch() != 2 {
		t.Fatalf("resume: replayed %d records, epoch %d; want some, epoch 2", st.Replayed, v.Epoch())
	}
	im.check(t, "resumed", v)
	vb.ForgetForTest(v) // crash again, the WAL still undrained

	// Another node takes the volume over: the resume is refused and
	// touches neither the store nor the WAL.
	b, err := vb.Open(ctx, s, im.vol, quietOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	before = manifestBytes(t, s, im.vol)
	files := dirFiles(t, filepath.Join(wa, im.vol))
	if _, err := vb.Open(ctx, s, im.vol, resume); !errors.Is(err, vb.ErrNotOwner) || !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("resume after a takeover: %v, want ErrNotOwner", err)
	}
	if !bytes.Equal(manifestBytes(t, s, im.vol), before) {
		t.Fatal("a refused resume changed the manifest")
	}
	sameFiles(t, "the WAL after a refused resume", files, dirFiles(t, filepath.Join(wa, im.vol)))
	if _, err := b.WriteAt(make([]byte, vb.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Drain(ctx); err != nil {
		t.Fatalf("the new owner after a refused resume: %v", err)
	}
}

// raceStore runs takeover once, just before the first manifest PutIf: the
// takeover lands between a resuming open's read and its epoch bump. lose
// then fails that PutIf without applying it and without saying why (the
// outcome unknown), instead of passing it to the store.
type raceStore struct {
	backend.Store
	once     sync.Once
	takeover func()
	lose     bool
}

func (r *raceStore) PutIf(ctx context.Context, k string, d []byte, v backend.Version) (backend.Version, error) {
	ran := false
	if isManifestKey(k) {
		r.once.Do(func() { ran = true; r.takeover() })
	}
	if ran && r.lose {
		return "", errAnswerLost
	}
	return r.Store.PutIf(ctx, k, d, v)
}

func TestResumeOnlyTakeoverDuringOpen(t *testing.T) {
	forEachStore(t, func(t *testing.T, newStore func(t *testing.T) backend.Store) {
		for _, lose := range []bool{false, true} {
			name := "conflict"
			if lose {
				name = "answer-lost"
			}
			t.Run(name, func(t *testing.T) { testResumeOnlyTakeoverDuringOpen(t, newStore, lose) })
		}
	})
}

func testResumeOnlyTakeoverDuringOpen(t *testing.T, newStore func(t *testing.T) backend.Store, lose bool) {
	ctx := context.Background()
	s := newStore(t)
	im := volImage{vol: "race-" + filepath.Base(t.Name())}
	if err := vb.CreateOnly(ctx, s, im.vol, imgBlocks*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	wa := t.TempDir()
	crashWithWAL(t, s, &im, wa)
	files := dirFiles(t, filepath.Join(wa, im.vol))

	var b *vb.Volume
	rs := &raceStore{Store: s, lose: lose, takeover: func() {
		var err error
		if b, err = vb.Open(ctx, s, im.vol, quietOpts(t)); err != nil {
			t.Errorf("takeover: %v", err)
		}
	}}
	o := quietOpts(t)
	o.WALDir, o.ResumeOnly = wa, true
	_, err := vb.Open(ctx, rs, im.vol, o)
	if b == nil {
		t.Fatal("the takeover did not run")
	}
	defer b.Close()
	if !errors.Is(err, vb.ErrNotOwner) || !errors.Is(err, vb.ErrFenced) {
		t.Fatalf("resume whose epoch bump lost to a takeover: %v, want ErrNotOwner", err)
	}
	if inf, err := vb.Inspect(ctx, s, im.vol); err != nil || inf.Epoch != b.Epoch() {
		t.Fatalf("store epoch %d (%v), want the new owner's %d", inf.Epoch, err, b.Epoch())
	}
	sameFiles(t, "the WAL after a refused resume", files, dirFiles(t, filepath.Join(wa, im.vol)))
	if _, err := b.WriteAt(make([]byte, vb.BlockSize), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Drain(ctx); err != nil {
		t.Fatalf("the new owner after a refused resume: %v", err)
	}
}

// An unknown outcome that is not a takeover is no reason to refuse: the
// bump applied with its answer lost is adopted; a bump lost on the way is
// a plain (retryable) error, and the retry resumes the WAL.
func TestResumeOnlyOutcomeUnknown(t *testing.T) {
	ctx := context.Background()
	st, ls := newLossy(backend.NewMem())
	im := volImage{vol: "unknown"}
	if err := vb.CreateOnly(ctx, st, im.vol, imgBlocks*vb.BlockSize); err != nil {
		t.Fatal(err)
	}
	wa := t.TempDir()
	crashWithWAL(t, st, &im, wa)
	o := quietOpts(t)
	o.WALDir, o.ResumeOnly = wa, true

	ls.arm(dropRequest)
	if _, err := vb.Open(ctx, st, im.vol, o); err == nil || errors.Is(err, vb.ErrFenced) {
		t.Fatalf("resume whose epoch bump was lost: %v; want a plain error", err)
	}
	ls.arm(applyLoseAnswer)
	v, err := vb.Open(ctx, st, im.vol, o)
	if err != nil {
		t.Fatalf("resume whose epoch bump applied, answer lost: %v", err)
	}
	if s := v.Stats(); s.ResolvedCommits != 1 || s.Replayed == 0 {
		t.Fatalf("stats %+v: want one resolved commit and a replayed WAL", s)
	}
	im.check(t, "resumed", v)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	im.checkElsewhere(t, "after close", st)
}
