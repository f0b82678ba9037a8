package main

import (
	"context"
	"flag"

	vb "github.com/viperblock/viperblock-csi/pkg/viperblock"
	"github.com/viperblock/viperblock-csi/pkg/viperblock/seal"
)

var cmdRekey = &command{
	name: "rekey", args: "NAME --encryption-key-file OLD --new-encryption-key-file NEW", nargs: 1, json: true,
	summary: "re-wrap an encrypted volume's data keys under a new key",
	detail: `Re-wraps the data keys of encrypted volume NAME, in its manifest and its snapshots, from the
key in OLD to the key in NEW. No data is rewritten. OLD is checked first: a wrong key changes
nothing. The volume must not be open for writing (a rekey never takes a volume from a server): it
is refused while a server holds its lease; stop the server, rekey, serve with the new key. A clone
keeps its own copy of its parent's wrapped keys and is re-keyed on its own.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.newKeyFile, "new-encryption-key-file", "", "file holding the new key-encryption key (required)")
	},
	run: func(ctx context.Context, e *env, o *opts, args []string) error {
		if o.keyFile == "" || o.newKeyFile == "" {
			return usagef("rekey needs --encryption-key-file OLD and --new-encryption-key-file NEW")
		}
		oldKeys, err := o.keys()
		if err != nil {
			return err
		}
		newKeys, err := seal.LoadKeyFile(o.newKeyFile)
		if err != nil {
			return err
		}
		store, err := openStore(ctx, o)
		if err != nil {
			return err
		}
		defer store.Close()
		if err := vb.Rekey(ctx, store, args[0], oldKeys, newKeys); err != nil {
			return volErr(args[0], o, err)
		}
		if o.json {
			return printJSON(e, struct {
				Name  string
				KEKID string
			}{args[0], newKeys.KEKID()})
		}
		e.printf("re-keyed volume %s: its data keys are now wrapped by %s\n", args[0], newKeys.KEKID())
		return nil
	},
}
