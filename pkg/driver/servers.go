package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/viperblock/viperblock-csi/pkg/nbdkit"
	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
)

// servers is the registry of the nbdkit processes that serve staged
// volumes in this node plugin process, by volume key: which one runs, and
// what the node knows about it that the process cannot tell (an unstage is
// stopping it, it died, the device lost it). The state files on disk say
// what is staged; this says what runs.
type servers struct {
	mu     sync.Mutex
	run    map[string]*volRuntime // guarded by mu
	closed bool                   // guarded by mu: the node server closed; no more healing
}

// volRuntime tracks a volume's nbdkit.
type volRuntime struct {
	srv      server
	stopping bool      // an unstage is stopping it: its exit is expected
	died     time.Time // it exited unexpectedly at this time (zero while it runs)
	broken   string    // why the device no longer reaches nbdkit ("" while it does)
}

// takeSlot reserves room for one more staged volume within
// MaxVolumesPerNode, counting the volumes with a server and the new stages
// in progress; releaseSlot gives it back once the stage has added its
// server or failed. (A stage that has just added its server still holds
// its slot, so for a moment it counts twice: a concurrent stage at the
// limit may be refused that would have fitted, never the other way.)
func (n *NodeServer) takeSlot() bool {
	n.slotMu.Lock()
	defer n.slotMu.Unlock()
	if max := n.opts.MaxVolumesPerNode; max > 0 && int64(n.servers.count()+n.staging) >= max {
		return false
	}
	n.staging++
	return true
}

func (n *NodeServer) releaseSlot() {
	n.slotMu.Lock()
	n.staging--
	n.slotMu.Unlock()
}

// count is the number of volumes with a server recorded (staged).
func (s *servers) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.run)
}

// get returns the volume's nbdkit if it runs.
func (s *servers) get(id volumeID) server {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.run[id.key()]
	if rt == nil {
		return nil
	}
	select {
	case <-rt.srv.Done():
		return nil
	default:
		return rt.srv
	}
}

// add records srv as the volume's nbdkit. A device's broken connection
// stays recorded: a new server does not mend it.
func (s *servers) add(id volumeID, srv server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run == nil {
		s.run = map[string]*volRuntime{}
	}
	rt := &volRuntime{srv: srv}
	if old := s.run[id.key()]; old != nil {
		rt.broken = old.broken
	}
	s.run[id.key()] = rt
}

// exited records that srv exited and reports whether that was expected
// (it was stopped, replaced or forgotten, or the node server closed).
func (s *servers) exited(id volumeID, srv server) (expected bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.run[id.key()]
	expected = rt == nil || rt.srv != srv || rt.stopping || s.closed
	if !expected {
		rt.died = time.Now()
	}
	return expected
}

// stopping marks srv, the volume's nbdkit, as being stopped on purpose.
func (s *servers) stopping(id volumeID, srv server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rt := s.run[id.key()]; rt != nil && rt.srv == srv {
		rt.stopping = true
	}
}

// healed clears the record of an unexpected exit.
func (s *servers) healed(id volumeID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rt := s.run[id.key()]; rt != nil {
		rt.died = time.Time{}
	}
}

// setBroken records (or clears) why the volume's device cannot reach nbdkit.
func (s *servers) setBroken(id volumeID, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rt := s.run[id.key()]; rt != nil {
		rt.broken = why
	}
}

// broken says why the volume's device cannot reach nbdkit, if so.
func (s *servers) broken(id volumeID) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rt := s.run[id.key()]; rt != nil {
		return rt.broken
	}
	return ""
}

// remove forgets the volume (unstaged).
func (s *servers) remove(id volumeID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.run, id.key())
}

// all returns every tracked server.
func (s *servers) all() []server {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []server
	for _, rt := range s.run {
		out = append(out, rt.srv)
	}
	return out
}

// close marks the node server closed: exits are expected from now on and
// the healer stops.
func (s *servers) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
}

// isClosed reports whether close was called.
func (s *servers) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// running returns the volume's nbdkit if it runs.
func (n *NodeServer) running(id volumeID) server { return n.servers.get(id) }

// ensureServer makes sure the volume's nbdkit runs: the one already
// tracked, one adopted from its pidfile, or a new one. A new nbdkit takes
// ownership of the volume, an adopted one already has it.
//
// resume is set for a reopen on the node's own initiative (the healer, an
// unstage serving the volume once more to drain it): a new nbdkit then
// starts only while the volume is still this node's (checkOwner), and with
// resume_only=true, so that the engine itself refuses to take the volume
// back should another owner take it over between that check and nbdkit's
// open. Such a refusal is errOwnedElsewhere, as the check's own is. (With
// no OWNER file in the WAL directory there is nothing for the engine to
// check against: the reopen relies on the check alone, as NodeStage's
// ownership is recorded only in the state file's epoch then.)
func (n *NodeServer) ensureServer(ctx context.Context, id volumeID, st *volState, url string, resume bool) (server, error) {
	if srv := n.running(id); srv != nil {
		return srv, nil
	}
	p := n.paths(id)
	for _, d := range []string{p.Dir, filepath.Dir(p.Socket), p.WALDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	spec := n.spec(id, st, url)
	srv, ok, err := n.sup.Adopt(spec)
	if err != nil {
		return nil, err
	}
	if ok {
		klog.InfoS("adopted running nbdkit", "volume", id, "pid", srv.Pid())
	} else {
		if resume && !st.ReadOnly && st.Standby {
			// A standby's nbdkit exited: if it had taken the volume
			// over, reopen it as its owner (resume_only, below);
			// otherwise start the standby again (it takes nothing).
			if _, err := n.restartCheck(ctx, id, st, url); err == nil {
				st.Standby = false
				own, _, err := vb.WALOwner(nil, p.WALDir, id.Vol)
				if err != nil {
					return nil, err
				}
				st.Epoch = max(own.Epoch, own.PendingEpoch)
				if err := n.saveState(id, st); err != nil {
					return nil, err
				}
				spec = n.spec(id, st, url)
			} else if !errors.Is(err, errOwnedElsewhere) {
				return nil, err
			}
		}
		if resume && !st.ReadOnly && !st.Standby {
			recorded, err := n.restartCheck(ctx, id, st, url)
			if err != nil {
				return nil, err
			}
			if recorded {
				spec.Params = append(spec.Params, "resume_only=true")
			}
		}
		srv, err = n.sup.Start(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errNbdkit, err)
		}
		klog.InfoS("started nbdkit", "volume", id, "pid", srv.Pid(), "socket", p.Socket)
	}
	n.track(id, srv)
	return srv, nil
}

// errNbdkit: nbdkit could not be started (its log says why).
var errNbdkit = errors.New("nbdkit failed")

// track records srv as the volume's nbdkit and watches it.
func (n *NodeServer) track(id volumeID, srv server) {
	n.servers.add(id, srv)
	go n.watch(id, srv)
}

// watch notices an nbdkit that exits while its volume is staged, and has
// the healer restart it.
func (n *NodeServer) watch(id volumeID, srv server) {
	<-srv.Done()
	if n.servers.exited(id, srv) {
		return
	}
	klog.ErrorS(nil, "nbdkit exited while its volume is staged; the healer restarts it if the volume is still this node's", "volume", id, "pid", srv.Pid(),
		"log", nbdkit.LogTail(n.paths(id).Log, -1))
	go n.healLater(id)
}

// stopServer stops the volume's nbdkit (tracked or adopted) and waits for
// it. If ctx ends first, nbdkit keeps draining and a retry waits again.
func (n *NodeServer) stopServer(ctx context.Context, id volumeID, st *volState) error {
	srv := n.running(id)
	if srv == nil {
		url, err := n.volumeURL(id, st)
		if err != nil {
			return err
		}
		s, ok, err := n.sup.Adopt(n.spec(id, st, url))
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		n.track(id, s)
		srv = s
	}
	n.servers.stopping(id, srv)
	if err := srv.Stop(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("nbdkit is still draining the volume: %w", ctx.Err())
		}
		return fmt.Errorf("%w: %v", errNotDrained, err)
	}
	os.Remove(n.paths(id).Pidfile)
	return nil
}
