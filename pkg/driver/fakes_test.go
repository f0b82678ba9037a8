package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/viperblock/viperblock-csi/pkg/attach"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/vfs"
)

// flakyStore wraps a store; while down, every call fails as an unreachable
// server would.
type flakyStore struct {
	backend.Store
	mu      sync.Mutex
	down    bool // guarded by mu
	refused int  // guarded by mu: calls failed while down
}

var errConnRefused = fmt.Errorf("dial tcp 127.0.0.1:9: %w", syscall.ECONNREFUSED)

func (f *flakyStore) setDown(d bool) { f.mu.Lock(); f.down = d; f.mu.Unlock() }

func (f *flakyStore) refusedCalls() int { f.mu.Lock(); defer f.mu.Unlock(); return f.refused }

func (f *flakyStore) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		f.refused++
		return errConnRefused
	}
	return nil
}

func (f *flakyStore) Get(ctx context.Context, key string) ([]byte, backend.Version, error) {
	if err := f.err(); err != nil {
		return nil, "", err
	}
	return f.Store.Get(ctx, key)
}

func (f *flakyStore) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.Store.GetRange(ctx, key, off, n)
}

func (f *flakyStore) Put(ctx context.Context, key string, data []byte) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Store.Put(ctx, key, data)
}

func (f *flakyStore) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	if err := f.err(); err != nil {
		return "", err
	}
	return f.Store.PutIf(ctx, key, data, v)
}

func (f *flakyStore) Delete(ctx context.Context, key string) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Store.Delete(ctx, key)
}

func (f *flakyStore) List(ctx context.Context, prefix string) ([]string, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.Store.List(ctx, prefix)
}

func (f *flakyStore) Close() error { return nil }

func (f *flakyStore) opener() storeOpener {
	return func(context.Context, string) (backend.Store, error) { return f, nil }
}

func newFlakyStore() *flakyStore { return &flakyStore{Store: backend.NewMem()} }

// fakeSup stands in for nbdkit: Start opens the volume with the real
// engine (taking ownership, as the plugin does) and Stop closes it
// (draining it, as the plugin does on SIGTERM).
type fakeSup struct {
	t      *testing.T
	store  backend.Store
	walDir string

	mu        sync.Mutex
	startErr  error // guarded by mu: Start fails with it
	stopErr   error // guarded by mu: Stop fails with it (after closing)
	crash     bool  // guarded by mu: Stop exits without draining (and fails)
	leaked    []*vb.Volume
	starts    int // guarded by mu
	running   map[string]*fakeServer
	adoptable bool // guarded by mu: Adopt finds running servers
	// beforeOpen, when set, runs in Start just before the engine's open
	// (after the node's own checks), with the spec's parameters.
	beforeOpen func(params []string)
	lastParams []string // guarded by mu: the parameters of the last Start
	help       string   // guarded by mu: PluginHelp's answer
}

func newFakeSup(t *testing.T, st backend.Store) *fakeSup {
	return &fakeSup{t: t, store: st, walDir: t.TempDir(), running: map[string]*fakeServer{}}
}

func param(params []string, key string) string {
	for _, p := range params {
		if v, ok := strings.CutPrefix(p, key+"="); ok {
			return v
		}
	}
	return ""
}

func (f *fakeSup) Start(ctx context.Context, spec nbdkitSpec) (server, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts++
	if f.startErr != nil {
		return nil, f.startErr
	}
	// The volume's WAL goes where the node put it (wal_dir=), as with the
	// real plugin: the engine's OWNER file there is the node's record of
	// its ownership. The lock is the fake's own: a server that "crashed"
	// (leaked, still open) must not keep its successor from opening.
	walDir := param(spec.Params, "wal_dir")
	if walDir == "" {
		walDir = f.t.TempDir()
	}
	// Leases of a second, so a test's other node takes over a dead or
	// paused fake server quickly.
	opts := vb.Options{WALDir: walDir, FS: noLockFS{vfs.Default}, CacheBlocks: -1, ReadOnly: param(spec.Params, "readonly") == "true",
		ResumeOnly: param(spec.Params, "resume_only") == "true", LeaseDuration: time.Second}
	if d, err := time.ParseDuration(param(spec.Params, "drain_interval")); err == nil {
		opts.DrainInterval = d
	}
	if d, err := time.ParseDuration(param(spec.Params, "lease_duration")); err == nil {
		opts.LeaseDuration = d
	}
	if kf := param(spec.Params, "encryption_key_file"); kf != "" {
		// As the plugin: the KEK from the file the node wrote.
		src, err := seal.LoadKeyFile(kf)
		if err != nil {
			return nil, fmt.Errorf("nbdkit exited before serving: %v", err)
		}
		opts.Keys = src
	}
	ps := &pausableStore{Store: f.store}
	f.lastParams = append([]string(nil), spec.Params...)
	if f.beforeOpen != nil {
		f.beforeOpen(spec.Params)
	}
	if param(spec.Params, "standby") == "true" {
		// The plugin's standby: it takes the volume at its first write
		// (here: handoff, called by the test).
		sb, err := vb.OpenStandby(ctx, ps, param(spec.Params, "volume"), opts)
		if err != nil {
			return nil, fmt.Errorf("nbdkit exited before serving: %v", err)
		}
		s := &fakeServer{sup: f, sb: sb, done: make(chan struct{}), socket: spec.Socket, store: ps}
		f.running[spec.Socket] = s
		return s, nil
	}
	v, err := vb.Open(ctx, ps, param(spec.Params, "volume"), opts)
	if errors.Is(err, vb.ErrNotOwner) {
		// As the real supervisor reports the plugin's exit status 77.
		return nil, fmt.Errorf("%w: nbdkit refused to take the volume back (resume_only): %v", errOwnedElsewhere, err)
	}
	if err != nil {
		return nil, fmt.Errorf("nbdkit exited before serving: %v", err)
	}
	s := &fakeServer{sup: f, v: v, done: make(chan struct{}), socket: spec.Socket, store: ps}
	f.running[spec.Socket] = s
	return s, nil
}

// pausableStore is a fake server's view of the store. Paused, its lease
// and release requests fail, as for a process that is stopped or cut off:
// the volume neither renews its lease nor answers requests to release it,
// so another node takes it over once the lease expires.
type pausableStore struct {
	backend.Store
	paused atomic.Bool
}

func (p *pausableStore) cutOff(key string) bool {
	return p.paused.Load() && (strings.HasSuffix(key, "/lease") || strings.HasSuffix(key, "/release"))
}

func (p *pausableStore) Get(ctx context.Context, key string) ([]byte, backend.Version, error) {
	if p.cutOff(key) {
		return nil, "", errors.New("fake: paused")
	}
	return p.Store.Get(ctx, key)
}

func (p *pausableStore) PutIf(ctx context.Context, key string, data []byte, v backend.Version) (backend.Version, error) {
	if p.cutOff(key) {
		return "", errors.New("fake: paused")
	}
	return p.Store.PutIf(ctx, key, data, v)
}

// pause makes the server unresponsive to the lease protocol (see
// pausableStore).
func (s *fakeServer) pause() { s.store.paused.Store(true) }

// noLockFS is the operating system's filesystem without the WAL lock: in
// the fake, a crashed server is a volume left open in the test process.
type noLockFS struct{ vfs.FS }

type noLock struct{}

func (noLock) Close() error { return nil }

func (noLockFS) TryLock(string) (io.Closer, error) { return noLock{}, nil }

func (f *fakeSup) Adopt(spec nbdkitSpec) (server, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.running[spec.Socket]
	if !ok || !f.adoptable {
		return nil, false, nil
	}
	return s, true, nil
}

type fakeServer struct {
	sup    *fakeSup
	v      *vb.Volume
	sb     *vb.Standby    // a standby=true server before its handoff
	store  *pausableStore // the volume's view of the store
	socket string
	once   sync.Once
	done   chan struct{}
}

func (s *fakeServer) Pid() int              { return 4242 }
func (s *fakeServer) Done() <-chan struct{} { return s.done }
func (s *fakeServer) Adopted() bool         { return false }

func (s *fakeServer) exit() error {
	var err error
	s.once.Do(func() {
		if s.sb != nil {
			s.sb.Close()
		}
		if s.v != nil {
			err = s.v.Close()
		}
		s.sup.mu.Lock()
		delete(s.sup.running, s.socket)
		s.sup.mu.Unlock()
		close(s.done)
	})
	return err
}

func (s *fakeServer) Kill() error { return s.exit() }

// handoff does what the plugin's first write on a standby does.
func (s *fakeServer) handoff(t *testing.T) {
	t.Helper()
	v, err := s.sb.Handoff(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.v = v
}

// name is the served volume's name.
func (s *fakeServer) name() string {
	if s.v != nil {
		return s.v.Name()
	}
	return s.sb.Name()
}

func (s *fakeServer) Stop(ctx context.Context) error {
	s.sup.mu.Lock()
	crash := s.sup.crash
	s.sup.mu.Unlock()
	if crash {
		// Exit without closing: the store still shows the volume open.
		s.once.Do(func() {
			s.sup.mu.Lock()
			delete(s.sup.running, s.socket)
			s.sup.leaked = append(s.sup.leaked, s.v)
			s.sup.mu.Unlock()
			close(s.done)
		})
		return fmt.Errorf("%w: nbdkit exit status 1: drain at close failed", errNotDrained)
	}
	if err := s.exit(); err != nil {
		return err
	}
	s.sup.mu.Lock()
	defer s.sup.mu.Unlock()
	return s.sup.stopErr
}

// fakeAttacher records attachments.
type fakeAttacher struct {
	mu        sync.Mutex
	devs      map[string]attach.Device // guarded by mu
	attachErr error
	busy      bool // Detach fails with ErrBusy
	n         int
}

func newFakeAttacher() *fakeAttacher { return &fakeAttacher{devs: map[string]attach.Device{}} }

func (a *fakeAttacher) Kind() string { return "fake" }

func (a *fakeAttacher) Attach(_ context.Context, exp attach.Export) (attach.Device, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.attachErr != nil {
		return attach.Device{}, a.attachErr
	}
	if d, ok := a.devs[exp.ID]; ok {
		return d, nil
	}
	a.n++
	d := attach.Device{Path: fmt.Sprintf("/dev/fake%d", a.n), Kind: "fake", ID: exp.ID, Size: exp.Size}
	a.devs[exp.ID] = d
	return d, nil
}

func (a *fakeAttacher) Detach(_ context.Context, id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.busy {
		return fmt.Errorf("%w: /dev/fake is held", attach.ErrBusy)
	}
	delete(a.devs, id)
	return nil
}

func (a *fakeAttacher) Find(_ context.Context, id string) (attach.Device, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	d, ok := a.devs[id]
	return d, ok, nil
}

func (a *fakeAttacher) Resize(_ context.Context, exp attach.Export) (attach.Device, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	d, ok := a.devs[exp.ID]
	if !ok {
		return attach.Device{}, attach.ErrNotAttached
	}
	if exp.Size > d.Size {
		d.Size = exp.Size
	}
	a.devs[exp.ID] = d
	return d, nil
}

func (a *fakeAttacher) attached() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.devs)
}

// fakeMounter keeps a mount table in memory.
type fakeMounter struct {
	mu        sync.Mutex
	mounts    map[string]string // guarded by mu: target -> source
	formatErr error
	busy      map[string]bool // Unmount of these fails with errBusy
	formats   int
	resizes   int
	options   map[string][]string // guarded by mu: target -> mount options
}

func newFakeMounter() *fakeMounter {
	return &fakeMounter{mounts: map[string]string{}, busy: map[string]bool{}, options: map[string][]string{}}
}

func (m *fakeMounter) FormatAndMount(source, target, fstype string, options, formatOptions []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.formatErr != nil {
		return m.formatErr
	}
	m.formats++
	m.mounts[target] = source
	m.options[target] = append([]string(nil), options...)
	return nil
}

func (m *fakeMounter) Mount(source, target, fstype string, options []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mounts[target] = source
	return nil
}

func (m *fakeMounter) Unmount(target string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.busy[target] {
		return fmt.Errorf("%w: umount %s: target is busy", errBusy, target)
	}
	delete(m.mounts, target)
	return nil
}

func (m *fakeMounter) IsMountPoint(path string) (bool, error) {
	if _, err := os.Stat(path); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.mounts[path]
	return ok, nil
}

func (m *fakeMounter) ResizeFS(device, path string) error {
	m.mu.Lock()
	m.resizes++
	m.mu.Unlock()
	return nil
}

func (m *fakeMounter) GrowUnmounted(string) error { return nil }

func (m *fakeMounter) DeviceSize(string) (int64, error) { return 1 << 30, nil }

func (m *fakeMounter) setBusy(target string, b bool) {
	m.mu.Lock()
	m.busy[target] = b
	m.mu.Unlock()
}

func (m *fakeMounter) mounted(target string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.mounts[target]
	return ok
}

var errMkfs = errors.New("mkfs.ext4: exit status 1: Could not allocate block in ext4 filesystem")

// Probe finds the fake's "nbdkit" always there.
func (f *fakeSup) Probe(context.Context, string, string) error { return nil }

// PluginHelp: the fake plugin takes no virtual_size=, and memory= only
// when help says so.
func (f *fakeSup) PluginHelp(context.Context, string, string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.help, nil
}
