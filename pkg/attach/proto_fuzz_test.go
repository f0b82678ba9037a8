package attach

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
)

// Fuzz targets for the client side of the NBD handshake (negotiate). The
// server is a script: its bytes come from a bytes.Reader, so a run ends at
// the script's end (EOF) at the latest, and what the client writes is kept
// for inspection. The client does not adapt what it sends to anything but
// the server's bytes, so a script is as good as a live server.

// maxReplyAlloc is the most the client may allocate from one length field
// of an option reply (optInfo's cap on a reply's payload).
const maxReplyAlloc = 1 << 20

// fzConn is a scripted server: reads come from the script, writes are
// recorded. It remembers the largest read asked for, which is the largest
// buffer negotiate allocated from a length field (io.ReadFull asks for the
// whole buffer at once).
type fzConn struct {
	r       *bytes.Reader
	w       bytes.Buffer
	maxRead int
}

func (c *fzConn) Read(p []byte) (int, error) {
	if len(p) > c.maxRead {
		c.maxRead = len(p)
	}
	return c.r.Read(p)
}

func (c *fzConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// fzHandshake describes a well-formed exchange with a fixed-newstyle (or
// plain newstyle) server, for fzEncode.
type fzHandshake struct {
	Fixed, NoZeroes bool   // handshake flags the server offers
	GoPhase         bool   // what negotiate is asked for
	NoInfo, NoGo    bool   // the server replies ERR_UNSUP to NBD_OPT_INFO, NBD_OPT_GO
	Size            uint64 // the export's size
	Flags           uint16 // transmission flags
	BlockSize       bool   // the server states block sizes
	BlockFirst      bool   // ... before NBD_INFO_EXPORT rather than after
	Min, Pref, Max  uint32
	Extra           []byte // payload of informational replies the client must ignore
}

// fzEncode returns the server's bytes for h and the client's bytes the
// client must send in answer, byte for byte.
func fzEncode(h fzHandshake, name string) (server, client []byte) {
	u16 := func(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
	u32 := func(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
	u64 := func(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
	reply := func(opt, typ uint32, data []byte) {
		server = u64(server, nbdReplyMagic)
		server = u32(server, opt)
		server = u32(server, typ)
		server = u32(server, uint32(len(data)))
		server = append(server, data...)
	}
	option := func(opt uint32, data []byte) {
		client = u64(client, nbdOptMagic)
		client = u32(client, opt)
		client = u32(client, uint32(len(data)))
		client = append(client, data...)
	}
	infoRequest := u32(nil, uint32(len(name)))
	infoRequest = append(infoRequest, name...)
	infoRequest = u16(infoRequest, 1)
	infoRequest = u16(infoRequest, nbdInfoBlockSize)

	var hflags uint16
	var cflags uint32
	if h.Fixed {
		hflags |= nbdFlagFixedNewstyle
		cflags |= nbdFlagFixedNewstyle
	}
	if h.NoZeroes {
		hflags |= nbdFlagNoZeroes
		cflags |= nbdFlagNoZeroes
	}
	server = u64(server, nbdMagic)
	server = u64(server, nbdOptMagic)
	server = u16(server, hflags)
	client = u32(client, cflags)

	exportName := !h.Fixed
	if h.Fixed {
		opts := []uint32{nbdOptInfo, nbdOptGo}
		if h.GoPhase {
			opts = opts[1:]
		}
		for _, opt := range opts {
			option(opt, infoRequest)
			if opt == nbdOptInfo && h.NoInfo || opt == nbdOptGo && h.NoGo {
				reply(opt, nbdRepErrUnsup, nil)
				if opt == nbdOptGo {
					exportName = true
				}
				continue
			}
			// NBD_INFO_NAME (1) and an informational reply of a type
			// this client does not know: both are to be ignored.
			reply(opt, nbdRepInfo, append([]byte{0, 1}, h.Extra...))
			reply(opt, 0x7f, h.Extra)
			bs := u16(nil, nbdInfoBlockSize)
			bs = u32(u32(u32(bs, h.Min), h.Pref), h.Max)
			if h.BlockSize && h.BlockFirst {
				reply(opt, nbdRepInfo, bs)
			}
			reply(opt, nbdRepInfo, u16(u64(u16(nil, nbdInfoExport), h.Size), h.Flags))
			if h.BlockSize && !h.BlockFirst {
				reply(opt, nbdRepInfo, bs)
			}
			reply(opt, nbdRepAck, nil)
			if opt == nbdOptInfo {
				option(nbdOptAbort, nil)
			}
			break
		}
	}
	if exportName {
		option(nbdOptExportName, []byte(name))
		server = u16(u64(server, h.Size), h.Flags)
		if !h.NoZeroes {
			server = append(server, make([]byte, 124)...)
		}
	}
	return server, client
}

// want returns what negotiate must make of h: the info, whether it ends in
// the transmission phase, and whether it must refuse the export's size.
func (h fzHandshake) want() (info ExportInfo, inTransmission, badSize bool) {
	exportName := !h.Fixed || h.NoGo && (h.GoPhase || h.NoInfo)
	info = ExportInfo{Size: int64(h.Size), Flags: h.Flags}
	if exportName {
		return info, true, h.Size > math.MaxInt64
	}
	if h.BlockSize {
		info.MinBlock, info.PrefBlock, info.MaxBlock = h.Min, h.Pref, h.Max
	}
	return info, h.GoPhase || h.NoInfo, h.Size > 1<<62
}

// fzSeeds are well-formed handshakes of every shape.
var fzSeeds = []fzHandshake{
	{Fixed: true, Size: 64 << 20, Flags: FlagHasFlags | FlagSendFlush | FlagCanMultiConn},
	{Fixed: true, NoZeroes: true, GoPhase: true, Size: 1 << 30, Flags: FlagHasFlags, BlockSize: true, Min: 512, Pref: 4096, Max: 1 << 25},
	{Fixed: true, NoInfo: true, Size: 4096, Flags: FlagHasFlags | FlagReadOnly, BlockSize: true, BlockFirst: true, Min: 1, Pref: 4096, Max: 1 << 20, Extra: []byte("vol-1")},
	{Fixed: true, NoInfo: true, NoGo: true, Size: 12345 * 512, Flags: FlagHasFlags},
	{Fixed: true, NoZeroes: true, GoPhase: true, NoGo: true, Size: 1 << 40},
	{NoZeroes: true, Size: 512},
	{Size: 0, Flags: 0xffff},
	{Fixed: true, Size: 1<<62 + 1},                         // too large for NBD_INFO_EXPORT
	{Fixed: true, NoInfo: true, NoGo: true, Size: 1 << 63}, // negative as int64
}

// fzAllowedError reports whether err is one negotiate may return: a
// protocol error, a short read, or an error reply of the server's about the
// export.
func fzAllowedError(err error, name string) bool {
	return errors.Is(err, errNBDProto) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.HasPrefix(err.Error(), fmt.Sprintf("export %q: ", name))
}

// FuzzNBDHandshake feeds arbitrary server bytes to negotiate. It checks
// that negotiate never panics and ends (the script is finite, so EOF must
// end it); that it never asks for more than maxReplyAlloc bytes at once,
// whatever a length field says; that it fails only with a protocol error,
// a short read or the server's error reply, in a message without control
// characters of the server's and of bounded length; that an export it
// accepts has a size in [0, 2^63); and that everything the client wrote is
// a well-formed client side of the handshake naming the export it was
// asked for.
func FuzzNBDHandshake(f *testing.F) {
	for _, h := range fzSeeds {
		s, _ := fzEncode(h, "vol")
		f.Add(s, "vol", h.GoPhase)
		f.Add(s[:len(s)-1], "vol", h.GoPhase)
		f.Add(s[:len(s)/2], "", !h.GoPhase)
	}
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"), "", false)
	f.Add([]byte{}, "x", true)
	f.Fuzz(func(t *testing.T, script []byte, name string, goPhase bool) {
		c := &fzConn{r: bytes.NewReader(script)}
		info, inTx, err := negotiate(c, name, goPhase)
		if c.maxRead > maxReplyAlloc {
			t.Fatalf("read of %d bytes asked for (a length field trusted?)", c.maxRead)
		}
		if err != nil {
			if !fzAllowedError(err, name) {
				t.Fatalf("unexpected error class: %v", err)
			}
			msg := strings.Replace(err.Error(), fmt.Sprintf("%q", name), "", 1)
			if len(msg) > 2048 {
				t.Fatalf("error message of %d bytes", len(msg))
			}
			if i := strings.IndexFunc(msg, func(r rune) bool { return r < 0x20 || r == 0x7f }); i >= 0 {
				t.Fatalf("control character in error message: %q", msg)
			}
		} else if info.Size < 0 {
			t.Fatalf("accepted export size %d", info.Size)
		}
		if err == nil && goPhase && !inTx {
			t.Fatal("asked for the transmission phase, not in it")
		}
		fzCheckClient(t, c.w.Bytes(), name)
	})
}

// fzCheckClient checks the client's side of a handshake: client flags
// (fixed newstyle and no zeroes only), then options, each with the option
// magic and the length of its data, naming the export where they name one.
func fzCheckClient(t *testing.T, b []byte, name string) {
	t.Helper()
	if len(b) == 0 {
		return // nothing sent (the greeting was bad)
	}
	if len(b) < 4 {
		t.Fatalf("client flags of %d bytes", len(b))
	}
	if f := binary.BigEndian.Uint32(b); f&^(nbdFlagFixedNewstyle|nbdFlagNoZeroes) != 0 {
		t.Fatalf("client flags %#x", f)
	}
	b = b[4:]
	for len(b) > 0 {
		if len(b) < 16 || binary.BigEndian.Uint64(b) != nbdOptMagic {
			t.Fatalf("bad option header % x", b[:min(len(b), 16)])
		}
		opt, n := binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint32(b[12:])
		if uint64(n) > uint64(len(b)-16) {
			t.Fatalf("option %d says %d bytes, %d follow", opt, n, len(b)-16)
		}
		data := b[16 : 16+n]
		b = b[16+n:]
		switch opt {
		case nbdOptInfo, nbdOptGo:
			if len(data) < 4 || binary.BigEndian.Uint32(data) != uint32(len(name)) || len(data) < 4+len(name) ||
				string(data[4:4+len(name)]) != name || len(data) != 4+len(name)+2+2*int(binary.BigEndian.Uint16(data[4+len(name):])) {
				t.Fatalf("option %d data % x for export %q", opt, data, name)
			}
		case nbdOptExportName:
			if string(data) != name {
				t.Fatalf("NBD_OPT_EXPORT_NAME %q for export %q", data, name)
			}
			if len(b) != 0 {
				t.Fatalf("%d bytes sent after NBD_OPT_EXPORT_NAME", len(b))
			}
		case nbdOptAbort:
			if n != 0 || len(b) != 0 {
				t.Fatalf("NBD_OPT_ABORT with %d bytes, %d after", n, len(b))
			}
		default:
			t.Fatalf("option %d sent", opt)
		}
	}
}

// FuzzNBDHandshakeRoundTrip builds a well-formed handshake from the fuzz
// input with fzEncode and checks that negotiate reads it back: the size,
// flags and block sizes it encodes (or a protocol error for a size out of
// range), the phase it ends in, every server byte consumed and nothing more
// asked for, and the client's bytes exactly those the protocol prescribes.
func FuzzNBDHandshakeRoundTrip(f *testing.F) {
	for _, h := range fzSeeds {
		f.Add(fzBits(h), h.Size, h.Flags, h.Min, h.Pref, h.Max, h.Extra, "vol")
	}
	f.Add(uint8(0xff), uint64(math.MaxInt64), uint16(0), uint32(0), uint32(0), uint32(0), []byte(nil), strings.Repeat("n", 300))
	f.Fuzz(func(t *testing.T, bits uint8, size uint64, flags uint16, mn, pref, mx uint32, extra []byte, name string) {
		h := fzHandshake{
			Fixed: bits&1 != 0, NoZeroes: bits&2 != 0, GoPhase: bits&4 != 0, NoInfo: bits&8 != 0, NoGo: bits&16 != 0,
			BlockSize: bits&32 != 0, BlockFirst: bits&64 != 0,
			Size: size, Flags: flags, Min: mn, Pref: pref, Max: mx, Extra: extra,
		}
		if len(extra) > maxReplyAlloc-2 {
			return
		}
		server, client := fzEncode(h, name)
		c := &fzConn{r: bytes.NewReader(server)}
		info, inTx, err := negotiate(c, name, h.GoPhase)
		want, wantTx, badSize := h.want()
		if badSize {
			if !errors.Is(err, errNBDProto) {
				t.Fatalf("%+v: size %d accepted or odd error: %+v %v", h, size, info, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		if info != want || inTx != wantTx {
			t.Fatalf("%+v: got %+v inTransmission=%v, want %+v %v", h, info, inTx, want, wantTx)
		}
		if c.r.Len() != 0 {
			t.Fatalf("%+v: %d server bytes left unread", h, c.r.Len())
		}
		if !bytes.Equal(c.w.Bytes(), client) {
			t.Fatalf("%+v: client sent\n% x\nwant\n% x", h, c.w.Bytes(), client)
		}
	})
}

// fzBits packs h's booleans as FuzzNBDHandshakeRoundTrip unpacks them.
func fzBits(h fzHandshake) uint8 {
	var b uint8
	for i, v := range []bool{h.Fixed, h.NoZeroes, h.GoPhase, h.NoInfo, h.NoGo, h.BlockSize, h.BlockFirst} {
		if v {
			b |= 1 << i
		}
	}
	return b
}
