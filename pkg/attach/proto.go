package attach

// The client side of the NBD handshake (fixed newstyle), enough to learn an
// export's size and transmission flags and to hand a connection in the
// transmission phase to the kernel. Numbers are from the NBD protocol
// (doc/proto.md in the NBD project); all integers are big-endian.
//
//	server: "NBDMAGIC" u64 IHAVEOPT  u16 handshake flags
//	client: u32 client flags
//	client: u64 IHAVEOPT u32 option u32 length [data]        (repeated)
//	server: u64 REPLYMAGIC u32 option u32 reply type u32 length [data]
//
// NBD_OPT_GO / NBD_OPT_INFO data: u32 name length, name, u16 number of
// info requests, u16 each. Replies: NBD_REP_INFO (u16 info type, then for
// NBD_INFO_EXPORT u64 size u16 flags; for NBD_INFO_BLOCK_SIZE u32 minimum,
// u32 preferred, u32 maximum) until NBD_REP_ACK or an error reply (bit 31
// set). NBD_OPT_EXPORT_NAME (old servers) has no reply header: u64 size,
// u16 flags, then 124 zero bytes unless NBD_FLAG_NO_ZEROES was agreed.
//
// Structured replies are never negotiated: the kernel client does not
// speak them.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic   = 0x49484156454f5054 // "IHAVEOPT"
	nbdReplyMagic = 0x0003e889045565a9
	nbdOldMagic   = 0x00420281861253

	nbdFlagFixedNewstyle = 1 << 0
	nbdFlagNoZeroes      = 1 << 1

	nbdOptExportName = 1
	nbdOptAbort      = 2
	nbdOptInfo       = 6
	nbdOptGo         = 7

	nbdRepAck       = 1
	nbdRepInfo      = 3
	nbdRepFlagError = 1 << 31
	nbdRepErrUnsup  = nbdRepFlagError | 1

	nbdInfoExport    = 0
	nbdInfoBlockSize = 3

	nbdRequestMagic = 0x25609513
	nbdCmdDisc      = 2
)

// Transmission flags an NBD server advertises for an export.
const (
	FlagHasFlags        = 1 << 0
	FlagReadOnly        = 1 << 1
	FlagSendFlush       = 1 << 2
	FlagSendFUA         = 1 << 3
	FlagRotational      = 1 << 4
	FlagSendTrim        = 1 << 5
	FlagSendWriteZeroes = 1 << 6
	FlagSendDF          = 1 << 7
	FlagCanMultiConn    = 1 << 8
	FlagSendResize      = 1 << 9
	FlagSendCache       = 1 << 10
	FlagSendFastZero    = 1 << 11
)

// ExportInfo is what a server tells about an export in the handshake.
type ExportInfo struct {
	// Size is the export's size in bytes.
	Size int64
	// Flags are the transmission flags (Flag*).
	Flags uint16
	// MinBlock, PrefBlock and MaxBlock are the server's block size
	// constraints, 0 when it did not state them.
	MinBlock, PrefBlock, MaxBlock uint32
}

// ReadOnly reports whether the server serves the export read-only.
func (i ExportInfo) ReadOnly() bool { return i.Flags&FlagReadOnly != 0 }

// MultiConn reports whether the server allows several connections.
func (i ExportInfo) MultiConn() bool { return i.Flags&FlagCanMultiConn != 0 }

// errNBDProto marks a server that does not follow the protocol.
var errNBDProto = errors.New("attach: NBD protocol error")

// nbdRepError names an option error reply.
func nbdRepError(t uint32) string {
	switch t &^ nbdRepFlagError {
	case 1:
		return "unsupported option"
	case 2:
		return "denied by policy"
	case 3:
		return "invalid option"
	case 4:
		return "unsupported on this platform"
	case 5:
		return "TLS required"
	case 6:
		return "unknown export"
	case 7:
		return "server shutting down"
	case 8:
		return "block size required"
	case 9:
		return "request too big"
	}
	return fmt.Sprintf("error %#x", t)
}

// dialExport connects to the export's server. ctx bounds the dial only.
func dialExport(ctx context.Context, exp Export) (net.Conn, error) {
	var d net.Dialer
	if exp.Socket != "" {
		c, err := d.DialContext(ctx, "unix", exp.Socket)
		if err != nil {
			return nil, fmt.Errorf("attach: connect to NBD server on %s: %w", exp.Socket, err)
		}
		return c, nil
	}
	if exp.Addr == "" {
		return nil, fmt.Errorf("%w: export has neither Socket nor Addr", ErrInvalid)
	}
	c, err := d.DialContext(ctx, "tcp", exp.Addr)
	if err != nil {
		return nil, fmt.Errorf("attach: connect to NBD server at %s: %w", exp.Addr, err)
	}
	return c, nil
}

func exportWhere(exp Export) string {
	if exp.Socket != "" {
		return exp.Socket
	}
	return exp.Addr
}

// withDeadline applies ctx's deadline (or def from now) to c and closes c
// when ctx ends first; the returned func undoes both.
func withDeadline(ctx context.Context, c net.Conn, def time.Duration) func() {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(def)
	}
	c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		c.SetDeadline(time.Time{})
	}
}

// Probe connects to the export, reads what the server says about it
// (NBD_OPT_INFO, or NBD_OPT_GO on servers without it) and disconnects. It is
// a cheap way to check that a server serves and to learn the export's size.
func Probe(ctx context.Context, exp Export) (ExportInfo, error) {
	c, err := dialExport(ctx, exp)
	if err != nil {
		return ExportInfo{}, err
	}
	defer c.Close()
	undo := withDeadline(ctx, c, 30*time.Second)
	defer undo()
	info, inTransmission, err := negotiate(c, exp.Name, false)
	if err != nil {
		return ExportInfo{}, fmt.Errorf("attach: NBD handshake with %s: %w", exportWhere(exp), err)
	}
	if inTransmission {
		sendDisconnect(c)
	}
	return info, nil
}

// handshake connects and negotiates up to the transmission phase, for the
// kernel client.
func handshake(ctx context.Context, exp Export) (net.Conn, ExportInfo, error) {
	c, err := dialExport(ctx, exp)
	if err != nil {
		return nil, ExportInfo{}, err
	}
	undo := withDeadline(ctx, c, 30*time.Second)
	info, _, err := negotiate(c, exp.Name, true)
	undo()
	if err != nil {
		c.Close()
		return nil, ExportInfo{}, fmt.Errorf("attach: NBD handshake with %s: %w", exportWhere(exp), err)
	}
	return c, info, nil
}

// negotiate runs the handshake on rw. With goPhase it ends in the
// transmission phase; otherwise it asks with NBD_OPT_INFO and aborts, unless
// the server lacks NBD_OPT_INFO, in which case it ends in the transmission
// phase too (inTransmission reports which).
func negotiate(rw io.ReadWriter, name string, goPhase bool) (info ExportInfo, inTransmission bool, err error) {
	var hdr [18]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return info, false, fmt.Errorf("reading greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(hdr[0:]); m != nbdMagic {
		return info, false, fmt.Errorf("%w: bad greeting magic %#x", errNBDProto, m)
	}
	switch m := binary.BigEndian.Uint64(hdr[8:]); m {
	case nbdOptMagic:
	case nbdOldMagic:
		return info, false, fmt.Errorf("%w: oldstyle server (unsupported)", errNBDProto)
	default:
		return info, false, fmt.Errorf("%w: bad greeting magic %#x", errNBDProto, m)
	}
	hflags := binary.BigEndian.Uint16(hdr[16:])
	var cflags uint32
	if hflags&nbdFlagFixedNewstyle != 0 {
		cflags |= nbdFlagFixedNewstyle
	}
	noZeroes := hflags&nbdFlagNoZeroes != 0
	if noZeroes {
		cflags |= nbdFlagNoZeroes
	}
	if err := binary.Write(rw, binary.BigEndian, cflags); err != nil {
		return info, false, fmt.Errorf("sending client flags: %w", err)
	}
	if hflags&nbdFlagFixedNewstyle != 0 {
		opt := uint32(nbdOptInfo)
		if goPhase {
			opt = nbdOptGo
		}
		for {
			info, err = optInfo(rw, opt, name)
			if err == nil {
				if opt == nbdOptInfo {
					sendOption(rw, nbdOptAbort, nil) // the server may reply and close; nothing to wait for
					return info, false, nil
				}
				return info, true, nil
			}
			var ue unsupErr
			if !errors.As(err, &ue) {
				return info, false, err
			}
			if opt == nbdOptInfo {
				opt = nbdOptGo
				continue
			}
			break // no NBD_OPT_GO: fall back to NBD_OPT_EXPORT_NAME
		}
	}
	if err := sendOption(rw, nbdOptExportName, []byte(name)); err != nil {
		return info, false, err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(rw, buf); err != nil {
		return info, false, fmt.Errorf("reading NBD_OPT_EXPORT_NAME reply (unknown export %q?): %w", name, err)
	}
	info.Size = int64(binary.BigEndian.Uint64(buf))
	info.Flags = binary.BigEndian.Uint16(buf[8:])
	if info.Size < 0 {
		return info, false, fmt.Errorf("%w: export size %d", errNBDProto, info.Size)
	}
	return info, true, nil
}

type unsupErr struct{ opt uint32 }

func (e unsupErr) Error() string { return fmt.Sprintf("server does not support option %d", e.opt) }

func sendOption(w io.Writer, opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(b, nbdOptMagic)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("sending option %d: %w", opt, err)
	}
	return nil
}

// optInfo sends NBD_OPT_INFO or NBD_OPT_GO for name, asking for the block
// size, and reads the replies up to NBD_REP_ACK.
func optInfo(rw io.ReadWriter, opt uint32, name string) (ExportInfo, error) {
	var info ExportInfo
	data := make([]byte, 4+len(name)+2+2)
	binary.BigEndian.PutUint32(data, uint32(len(name)))
	copy(data[4:], name)
	binary.BigEndian.PutUint16(data[4+len(name):], 1)
	binary.BigEndian.PutUint16(data[6+len(name):], nbdInfoBlockSize)
	if err := sendOption(rw, opt, data); err != nil {
		return info, err
	}
	haveExport := false
	for {
		var rh [20]byte
		if _, err := io.ReadFull(rw, rh[:]); err != nil {
			return info, fmt.Errorf("reading option reply: %w", err)
		}
		if m := binary.BigEndian.Uint64(rh[:]); m != nbdReplyMagic {
			return info, fmt.Errorf("%w: bad option reply magic %#x", errNBDProto, m)
		}
		if o := binary.BigEndian.Uint32(rh[8:]); o != opt {
			return info, fmt.Errorf("%w: reply for option %d, asked %d", errNBDProto, o, opt)
		}
		typ := binary.BigEndian.Uint32(rh[12:])
		n := binary.BigEndian.Uint32(rh[16:])
		if n > 1<<20 {
			return info, fmt.Errorf("%w: option reply of %d bytes", errNBDProto, n)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(rw, payload); err != nil {
			return info, fmt.Errorf("reading option reply: %w", err)
		}
		switch {
		case typ == nbdRepAck:
			if !haveExport {
				return info, fmt.Errorf("%w: NBD_REP_ACK without NBD_INFO_EXPORT", errNBDProto)
			}
			return info, nil
		case typ == nbdRepErrUnsup:
			return info, unsupErr{opt}
		case typ&nbdRepFlagError != 0:
			msg := nbdRepError(typ)
			if len(payload) > 0 {
				msg += ": " + serverMessage(payload)
			}
			return info, fmt.Errorf("export %q: %s", name, msg)
		case typ == nbdRepInfo:
			if len(payload) < 2 {
				return info, fmt.Errorf("%w: short NBD_REP_INFO", errNBDProto)
			}
			switch binary.BigEndian.Uint16(payload) {
			case nbdInfoExport:
				if len(payload) < 12 {
					return info, fmt.Errorf("%w: short NBD_INFO_EXPORT", errNBDProto)
				}
				sz := binary.BigEndian.Uint64(payload[2:])
				if sz > 1<<62 {
					return info, fmt.Errorf("%w: export size %d", errNBDProto, sz)
				}
				info.Size = int64(sz)
				info.Flags = binary.BigEndian.Uint16(payload[10:])
				haveExport = true
			case nbdInfoBlockSize:
				if len(payload) < 14 {
					return info, fmt.Errorf("%w: short NBD_INFO_BLOCK_SIZE", errNBDProto)
				}
				info.MinBlock = binary.BigEndian.Uint32(payload[2:])
				info.PrefBlock = binary.BigEndian.Uint32(payload[6:])
				info.MaxBlock = binary.BigEndian.Uint32(payload[10:])
			}
		default:
			// Other informational replies are ignored, as the protocol asks.
		}
	}
}

// maxServerMessage bounds how much of a server's error message goes into
// an error of ours.
const maxServerMessage = 256

// serverMessage renders the message of an error reply (meant to be UTF-8
// text, but the server's to choose) quoted, so that control characters
// cannot reach a log line or a gRPC status, and cut to maxServerMessage
// bytes.
func serverMessage(b []byte) string {
	if len(b) > maxServerMessage {
		return strconv.Quote(string(b[:maxServerMessage])) + "..."
	}
	return strconv.Quote(string(b))
}

// sendDisconnect sends NBD_CMD_DISC in the transmission phase.
func sendDisconnect(w io.Writer) {
	var b [28]byte
	binary.BigEndian.PutUint32(b[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(b[6:], nbdCmdDisc)
	w.Write(b[:])
}
