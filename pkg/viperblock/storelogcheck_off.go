//go:build viperblock_nostorelog

package viperblock

// A deliberately broken build (go build -tags viperblock_nostorelog): in
// the durability class "store" a flush returns without uploading the
// store log. The nemesis test uses it to show that it catches confirmed
// flushes lost with their node. Never ship it.
func init() { storeLogUploads = false }
