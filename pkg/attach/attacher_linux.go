//go:build linux

package attach

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
)

// attacher implements Attacher for both kinds: new attachments get kind;
// recorded ones are handled by the kind in their record.
type attacher struct {
	kind string
	o    Options
	// nbdErr is why kernel NBD is unavailable (nil if it is available).
	nbdErr error
}

func newAttacher(kind string, o Options) (Attacher, error) {
	a := &attacher{o: o}
	if kind == KindNBD || kind == KindAuto {
		a.nbdErr = nbdAvailable(o)
		if a.nbdErr == nil {
			a.kind = KindNBD
			return a, nil
		}
		if kind == KindNBD {
			return nil, a.nbdErr
		}
	} else {
		a.nbdErr = fmt.Errorf("%w: kernel NBD not chosen", ErrUnsupported)
	}
	if err := fuseAvailable(&a.o); err != nil {
		if kind == KindAuto {
			return nil, fmt.Errorf("%w (and %v)", err, a.nbdErr)
		}
		return nil, err
	}
	a.kind = KindNbdfuse
	return a, nil
}

// fuseAvailable checks what nbdfuse + loop need and resolves the binaries.
func fuseAvailable(o *Options) error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("%w: no /dev/fuse", ErrUnsupported)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("%w: no /dev/loop-control (loop driver)", ErrUnsupported)
	}
	for _, b := range []*string{&o.Nbdfuse, &o.Losetup} {
		name := *b
		if name == "" {
			name = "nbdfuse"
			if b == &o.Losetup {
				name = "losetup"
			}
		}
		p, err := exec.LookPath(name)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnsupported, err)
		}
		*b = p
	}
	return nil
}

func (a *attacher) Kind() string { return a.kind }

func (a *attacher) Attach(ctx context.Context, exp Export) (Device, error) {
	if err := checkExport(exp); err != nil {
		return Device{}, err
	}
	unlock, err := a.lock(ctx, exp.ID)
	if err != nil {
		return Device{}, err
	}
	defer unlock()
	st, err := a.readState(exp.ID)
	if err != nil {
		return Device{}, err
	}
	if st != nil {
		dev, serr := a.check(st)
		if serr == nil {
			return dev, nil
		}
		// Broken: clean up what is left, then attach anew.
		if err := a.teardown(ctx, st); err != nil {
			return Device{}, fmt.Errorf("%w; cleaning it up: %w", serr, err)
		}
	} else if _, err := os.Stat(a.dir(exp.ID)); err == nil {
		// A directory without a record: a crash before the first write.
		if err := a.teardown(ctx, &state{Kind: a.kind, ID: exp.ID, Index: -1}); err != nil {
			return Device{}, err
		}
	}
	if a.kind == KindNBD {
		return a.attachNBD(ctx, exp)
	}
	return a.attachFuse(ctx, exp)
}

func (a *attacher) Detach(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock, err := a.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := a.readState(id)
	if err != nil {
		return err
	}
	if st == nil {
		if _, err := os.Stat(a.dir(id)); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		st = &state{Kind: a.kind, ID: id, Index: -1}
	}
	return a.teardown(ctx, st)
}

func (a *attacher) Find(ctx context.Context, id string) (Device, bool, error) {
	if err := checkID(id); err != nil {
		return Device{}, false, err
	}
	unlock, err := a.lock(ctx, id)
	if err != nil {
		return Device{}, false, err
	}
	defer unlock()
	st, err := a.readState(id)
	if err != nil || st == nil {
		return Device{}, false, err
	}
	dev, err := a.check(st)
	if err != nil {
		return st.device(), false, err
	}
	return dev, true, nil
}

func (a *attacher) Resize(ctx context.Context, exp Export) (Device, error) {
	return a.withAttached(ctx, exp, func(st *state) (Device, error) {
		cur, err := a.check(st)
		if err != nil {
			return Device{}, err
		}
		if st.Kind == KindNBD {
			return a.resizeNBD(ctx, st, cur, exp)
		}
		return a.resizeFuse(ctx, st, cur, exp)
	})
}

// Reconnect implements Reconnecter.
func (a *attacher) Reconnect(ctx context.Context, exp Export) (Device, error) {
	return a.withAttached(ctx, exp, func(st *state) (Device, error) {
		if st.Kind != KindNBD {
			return Device{}, fmt.Errorf("%w: nbdfuse attachments cannot reconnect", ErrUnsupported)
		}
		return a.reconnectNBD(ctx, st, exp)
	})
}

// withAttached runs fn on the recorded attachment of exp under the
// export's lock; an export with no attachment is ErrNotAttached.
func (a *attacher) withAttached(ctx context.Context, exp Export, fn func(st *state) (Device, error)) (Device, error) {
	if err := checkExport(exp); err != nil {
		return Device{}, err
	}
	unlock, err := a.lock(ctx, exp.ID)
	if err != nil {
		return Device{}, err
	}
	defer unlock()
	st, err := a.readState(exp.ID)
	if err != nil {
		return Device{}, err
	}
	if st == nil {
		return Device{}, fmt.Errorf("%w: %s", ErrNotAttached, exp.ID)
	}
	return fn(st)
}

// check verifies a recorded attachment; the error wraps ErrStale.
func (a *attacher) check(st *state) (Device, error) {
	if st.Kind == KindNBD {
		return a.checkNBD(st)
	}
	return a.checkFuse(st)
}

// teardown removes whatever exists of an attachment, then its record.
func (a *attacher) teardown(ctx context.Context, st *state) error {
	if st.Kind == KindNBD {
		return a.teardownNBD(ctx, st)
	}
	return a.teardownFuse(ctx, st)
}

func resizeTarget(cur Device, want, limit int64, what string) (int64, error) {
	if want > limit {
		return 0, fmt.Errorf("%w: size %d exceeds %s (%d)", ErrInvalid, want, what, limit)
	}
	if want < cur.Size {
		return 0, fmt.Errorf("%w: size %d is smaller than the device (%d): shrinking is not supported", ErrInvalid, want, cur.Size)
	}
	return want, nil
}
