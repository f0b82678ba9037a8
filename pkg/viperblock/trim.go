package viperblock

import (
	"slices"

	"github.com/viperblock/viperblock-csi/pkg/viperblock/rangeset"
)

// Trims in memory.
//
// A trim is logged as one WAL record per shard it touches (a first block
// and a count: a whole-volume discard is one record per shard and 4 TiB)
// and drops the trimmed blocks' undrained writes from the block store. Until
// a drain commits it, the map still holds the blocks' older data, so a read
// of a block that is not in the block store asks the pending trims first.
// Once committed, a trim is the absence of the blocks from the manifest's
// extents: nothing else records it.
//
// The pending trims are two range sets (package rangeset: logarithmic
// lookups, adjacent and overlapping ranges merged): those logged since the
// last seal, and those in sealed records not yet committed. Sealing moves
// the first into the second; the commit of the drain that sealed them
// empties the second. Writes never need to take blocks out of them: a write
// newer than a trim is in the block store, which a read asks first, until
// the commit that drains it, which also ends every older trim.

// pendingTrims are the blocks trimmed by records no commit holds yet.
// Volume.trimMu guards it.
type pendingTrims struct {
	fresh  rangeset.Set // trims logged since the last seal
	sealed rangeset.Set // trims in sealed records, not yet committed
}

// covers reports whether a pending trim covers block b.
func (p *pendingTrims) covers(b uint64) bool {
	return p.fresh.Contains(b) || p.sealed.Contains(b)
}

func (p *pendingTrims) empty() bool { return p.fresh.Empty() && p.sealed.Empty() }

// seal moves the trims logged since the last seal among the sealed ones.
// The shard locks must be held, as they are by every trim: the sealed set
// then holds exactly the trims of the sealed records.
func (p *pendingTrims) seal() {
	if p.sealed.Empty() {
		p.fresh, p.sealed = p.sealed, p.fresh
		return
	}
	// A drain failed after its seal: the next one commits both.
	p.fresh.Ascend(0, func(start, end uint64) bool {
		p.sealed.Add(start, end)
		return true
	})
	p.fresh.Clear()
}

// addTrim records a trim just logged.
func (v *Volume) addTrim(start, count uint64) {
	v.trimMu.Lock()
	v.trims.fresh.Add(start, start+count)
	v.hasTrims.Store(true)
	v.trimMu.Unlock()
}

// addSealedTrims records trims read back from sealed records (a replayed
// WAL, an adopted store log).
func (v *Volume) addSealedTrims(trims []trimRange) {
	if len(trims) == 0 {
		return
	}
	v.trimMu.Lock()
	for _, t := range trims {
		v.trims.sealed.Add(t.start, t.start+t.count)
	}
	v.hasTrims.Store(true)
	v.trimMu.Unlock()
}

// sealTrims is pendingTrims.seal under trimMu; the shard locks must be held.
func (v *Volume) sealTrims() {
	v.trimMu.Lock()
	v.trims.seal()
	v.trimMu.Unlock()
}

// trimsCommitted forgets the sealed trims: a commit covering every sealed
// record applied them to the map, which must already be published.
func (v *Volume) trimsCommitted() {
	v.trimMu.Lock()
	v.trims.sealed.Clear()
	v.hasTrims.Store(!v.trims.empty())
	v.trimMu.Unlock()
}

// trimmed reports whether an undrained trim covers block b.
func (v *Volume) trimmed(b uint64) bool {
	v.trimMu.RLock()
	defer v.trimMu.RUnlock()
	return v.trims.covers(b)
}

// blockSeq is a block write: its block and its sequence number.
type blockSeq struct{ block, seq uint64 }

// trimmedLater reports, for each write, whether one of trims that is newer
// than the write covers its block (the write is then dead). It sweeps from
// the newest write to the oldest, adding to a range set each trim newer
// than the write at hand: O((w + t) log(w + t)), whatever the order of
// its arguments. It returns nil when no write is dead.
func trimmedLater(trims []trimRange, writes []blockSeq) []bool {
	if len(trims) == 0 || len(writes) == 0 {
		return nil
	}
	ts := slices.Clone(trims)
	slices.SortFunc(ts, func(a, b trimRange) int { return cmpDesc(a.seq, b.seq) })
	order := make([]int, len(writes))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmpDesc(writes[a].seq, writes[b].seq) })
	var newer rangeset.Set
	var dead []bool
	j := 0
	for _, i := range order {
		w := writes[i]
		for ; j < len(ts) && ts[j].seq > w.seq; j++ {
			newer.Add(ts[j].start, ts[j].start+ts[j].count)
		}
		if newer.Contains(w.block) {
			if dead == nil {
				dead = make([]bool, len(writes))
			}
			dead[i] = true
		}
	}
	return dead
}

func cmpDesc(a, b uint64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}
