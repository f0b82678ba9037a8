package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/backend"
)

var cmdStore = &command{
	name: "store", args: "check [URL]", nargs: -1, json: true,
	words:   []string{"check"},
	summary: "check that an object store does what volumes need",
	detail: `store check [URL]   run the compatibility self-test against the store at URL (default --store)

The self-test writes a few small objects under ` + backend.CheckPrefix + `/<random id>/ in the store and
checks that conditional writes are honoured (a create-only write with If-None-Match: * of an
existing key is refused; a write with If-Match of a wrong or superseded ETag is refused, of the
current one accepted), that reads return what was written, that ranged reads return the right
bytes, that listing and deleting work. It deletes its objects whatever the outcome. Fencing a
volume's old owner depends on conditional writes: the node and controller plugins run the same
check on every S3 store before they use it, and refuse a store that fails it.
Exit status 0 if every check passed, 1 naming the first failing check.`,
	run: runStore,
}

func runStore(ctx context.Context, e *env, o *opts, args []string) error {
	if len(args) == 0 || args[0] != "check" {
		return usagef("expected 'store check [URL]'")
	}
	if len(args) > 2 {
		return usagef("store check takes at most one URL")
	}
	if len(args) == 2 {
		o.store = args[1]
	}
	store, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer store.Close()
	rep, err := backend.Check(ctx, store)
	where := redact(mustURL(o.store))
	if o.json {
		if jerr := printJSON(e, storeCheckReport{Store: where, OK: err == nil, CheckReport: rep}); jerr != nil {
			return jerr
		}
	} else {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		for _, r := range rep.Results {
			state := "ok"
			if !r.OK {
				state = "FAILED"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, state, r.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	switch {
	case err == nil:
		if !o.json {
			e.printf("store %s: ok\n", where)
		}
		return nil
	case errors.Is(err, backend.ErrIncompatible):
		return fmt.Errorf("store %s cannot hold volumes: %w", where, err)
	}
	return fmt.Errorf("store %s: %w", where, err)
}

// storeCheckReport is store check's JSON report.
type storeCheckReport struct {
	Store string // the URL, without credentials or query
	OK    bool
	backend.CheckReport
}
