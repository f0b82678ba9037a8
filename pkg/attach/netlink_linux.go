//go:build linux

package attach

// A minimal generic netlink client (only what the nbd family needs):
// resolve a family by name, send one request with NLM_F_ACK and collect the
// replies up to the acknowledgement. Headers are in host byte order:
//
//	nlmsghdr:  u32 length (with header) u16 type (family id) u16 flags u32 seq u32 port
//	genlmsghdr: u8 cmd u8 version u16 reserved
//	nlattr:    u16 length (with header, without padding) u16 type, payload padded to 4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	nlmsgHdrLen   = 16
	genlHdrLen    = 4
	nlaHdrLen     = 4
	nlmFRequest   = 0x1
	nlmFAck       = 0x4
	nlmsgError    = 0x2
	nlmsgDone     = 0x3
	genlIDCtrl    = 0x10
	ctrlCmdGetFam = 3
	ctrlAttrFamID = 1
	ctrlAttrName  = 2
	nlaTypeMask   = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

var nlSeq atomic.Uint32

// nlAttrs builds a netlink attribute stream.
type nlAttrs []byte

func (b *nlAttrs) put(typ uint16, data []byte) {
	n := nlaHdrLen + len(data)
	var h [nlaHdrLen]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(n))
	binary.NativeEndian.PutUint16(h[2:], typ)
	*b = append(*b, h[:]...)
	*b = append(*b, data...)
	for len(*b)%4 != 0 {
		*b = append(*b, 0)
	}
}

func (b *nlAttrs) u32(typ uint16, v uint32) {
	var d [4]byte
	binary.NativeEndian.PutUint32(d[:], v)
	b.put(typ, d[:])
}

func (b *nlAttrs) u64(typ uint16, v uint64) {
	var d [8]byte
	binary.NativeEndian.PutUint64(d[:], v)
	b.put(typ, d[:])
}

// str puts a NUL-terminated string.
func (b *nlAttrs) str(typ uint16, s string) { b.put(typ, append([]byte(s), 0)) }

// nest puts the attributes fill builds inside an attribute of type typ.
func (b *nlAttrs) nest(typ uint16, fill func(*nlAttrs)) {
	var in nlAttrs
	fill(&in)
	b.put(typ, in)
}

// parseAttrs splits an attribute stream; later duplicates win.
func parseAttrs(b []byte) (map[uint16][]byte, error) {
	m := map[uint16][]byte{}
	for len(b) > 0 {
		if len(b) < nlaHdrLen {
			return nil, fmt.Errorf("netlink: truncated attribute")
		}
		n := int(binary.NativeEndian.Uint16(b))
		if n < nlaHdrLen || n > len(b) {
			return nil, fmt.Errorf("netlink: attribute length %d of %d", n, len(b))
		}
		m[binary.NativeEndian.Uint16(b[2:])&nlaTypeMask] = b[nlaHdrLen:n]
		n = (n + 3) &^ 3
		if n > len(b) {
			n = len(b)
		}
		b = b[n:]
	}
	return m, nil
}

// genlMessage is a whole generic netlink request.
func genlMessage(family uint16, cmd, version uint8, seq uint32, attrs nlAttrs) []byte {
	b := make([]byte, nlmsgHdrLen+genlHdrLen, nlmsgHdrLen+genlHdrLen+len(attrs))
	b = append(b, attrs...)
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], family)
	binary.NativeEndian.PutUint16(b[6:], nlmFRequest|nlmFAck)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b[16] = cmd
	b[17] = version
	return b
}

// genlConn is a NETLINK_GENERIC socket.
type genlConn struct{ fd int }

func dialGenl() (*genlConn, error) {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &genlConn{fd: fd}, nil
}

func (c *genlConn) Close() error { return syscall.Close(c.fd) }

// request sends one message and returns the attribute payloads of the
// replies, after the kernel's acknowledgement. A negative error in the
// acknowledgement is returned as a syscall.Errno.
func (c *genlConn) request(family uint16, cmd, version uint8, attrs nlAttrs, timeout time.Duration) ([][]byte, error) {
	seq := nlSeq.Add(1)
	msg := genlMessage(family, cmd, version, seq, attrs)
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	syscall.SetsockoptTimeval(c.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	if err := syscall.Sendto(c.fd, msg, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netlink send: %w", err)
	}
	var replies [][]byte
	buf := make([]byte, 1<<16)
	for {
		n, _, err := syscall.Recvfrom(c.fd, buf, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			if err == syscall.EAGAIN {
				return nil, fmt.Errorf("netlink: no answer in %v", timeout)
			}
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		b := buf[:n]
		for len(b) >= nlmsgHdrLen {
			l := int(binary.NativeEndian.Uint32(b))
			if l < nlmsgHdrLen || l > len(b) {
				return nil, fmt.Errorf("netlink: bad message length %d", l)
			}
			typ := binary.NativeEndian.Uint16(b[4:])
			mseq := binary.NativeEndian.Uint32(b[8:])
			body := b[nlmsgHdrLen:l]
			b = b[(l+3)&^3:]
			if mseq != seq {
				continue
			}
			switch typ {
			case nlmsgError:
				if len(body) < 4 {
					return nil, fmt.Errorf("netlink: short error message")
				}
				if e := int32(binary.NativeEndian.Uint32(body)); e != 0 {
					return replies, syscall.Errno(-e)
				}
				return replies, nil
			case nlmsgDone:
				return replies, nil
			default:
				if len(body) >= genlHdrLen {
					replies = append(replies, append([]byte(nil), body[genlHdrLen:]...))
				}
			}
		}
	}
}

// family resolves a generic netlink family name to its id; a missing
// family is syscall.ENOENT.
func (c *genlConn) family(name string) (uint16, error) {
	var a nlAttrs
	a.str(ctrlAttrName, name)
	replies, err := c.request(genlIDCtrl, ctrlCmdGetFam, 1, a, 5*time.Second)
	if err != nil {
		return 0, err
	}
	for _, r := range replies {
		m, err := parseAttrs(r)
		if err != nil {
			return 0, err
		}
		if v := m[ctrlAttrFamID]; len(v) >= 2 {
			return binary.NativeEndian.Uint16(v), nil
		}
	}
	return 0, errors.New("netlink: no family id in the reply")
}
