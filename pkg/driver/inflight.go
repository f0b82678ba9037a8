package driver

import (
	"fmt"
	"sync"
)

// inflight holds per-object locks for mutating RPCs: a second request for
// an object that is being worked on fails at once with codes.Aborted (the
// CO retries), instead of queueing behind the first.
type inflight struct {
	mu   sync.Mutex
	busy map[string]struct{} // guarded by mu: keys with a request in progress
}

// acquire takes the lock for key, or returns an error wrapping errInFlight.
// Call the returned function to release it.
func (f *inflight) acquire(key string) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy == nil {
		f.busy = map[string]struct{}{}
	}
	if _, ok := f.busy[key]; ok {
		return nil, fmt.Errorf("%s: %w", key, errInFlight)
	}
	f.busy[key] = struct{}{}
	return func() {
		f.mu.Lock()
		delete(f.busy, key)
		f.mu.Unlock()
	}, nil
}
