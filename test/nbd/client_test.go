package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, simple
// replies), enough to drive several connections at once and to know exactly
// which requests the server acknowledged. One request at a time per client.

const (
	nbdOptMagic   = 0x49484156454F5054 // "IHAVEOPT"
	nbdRepMagic   = 0x3e889045565a9
	nbdReqMagic   = 0x25609513
	nbdReplyMagic = 0x67446698

	nbdOptGo  = 7
	nbdRepAck = 1
	nbdRepInf = 3

	cmdRead, cmdWrite, cmdDisc, cmdFlush, cmdTrim, cmdWriteZeroes = 0, 1, 2, 3, 4, 6
	flagFUA                                                       = 1 << 0
)

// nbdError is an error the server returned for a request.
type nbdError struct {
	op    string
	errno syscall.Errno
}

func (e *nbdError) Error() string {
	return fmt.Sprintf("nbd %s: server error %d (%v)", e.op, int(e.errno), e.errno)
}

type client struct {
	mu     sync.Mutex
	c      net.Conn
	size   uint64
	flags  uint16
	cookie uint64
}

func dial(socket string) (*client, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return nil, err
	}
	cl := &client{c: c}
	if err := cl.handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	return cl, nil
}

func (cl *client) handshake() error {
	var hello [18]byte
	if _, err := io.ReadFull(cl.c, hello[:]); err != nil {
		return err
	}
	if string(hello[:8]) != "NBDMAGIC" || binary.BigEndian.Uint64(hello[8:]) != nbdOptMagic {
		return errors.New("not a newstyle NBD server")
	}
	if binary.BigEndian.Uint16(hello[16:])&1 == 0 {
		return errors.New("server lacks fixed newstyle")
	}
	// Client flags: fixed newstyle, no zeroes.
	if err := binary.Write(cl.c, binary.BigEndian, uint32(3)); err != nil {
		return err
	}
	// NBD_OPT_GO, default export, no info requests.
	opt := make([]byte, 16+4+2)
	binary.BigEndian.PutUint64(opt, nbdOptMagic)
	binary.BigEndian.PutUint32(opt[8:], nbdOptGo)
	binary.BigEndian.PutUint32(opt[12:], 6)
	if _, err := cl.c.Write(opt); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(cl.c, h[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(h[:]) != nbdRepMagic {
			return errors.New("bad option reply magic")
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		data := make([]byte, n)
		if _, err := io.ReadFull(cl.c, data); err != nil {
			return err
		}
		switch {
		case typ == nbdRepAck:
			if cl.size == 0 && cl.flags == 0 {
				return errors.New("no export info")
			}
			return nil
		case typ == nbdRepInf && n >= 12 && binary.BigEndian.Uint16(data) == 0:
			cl.size = binary.BigEndian.Uint64(data[2:])
			cl.flags = binary.BigEndian.Uint16(data[10:])
		case typ&(1<<31) != 0:
			return fmt.Errorf("option refused (reply type %#x): %s", typ, data)
		}
	}
}

func (cl *client) request(op string, typ, flags uint16, off uint64, length uint32, payload, readInto []byte) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.cookie++
	req := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(req, nbdReqMagic)
	binary.BigEndian.PutUint16(req[4:], flags)
	binary.BigEndian.PutUint16(req[6:], typ)
	binary.BigEndian.PutUint64(req[8:], cl.cookie)
	binary.BigEndian.PutUint64(req[16:], off)
	binary.BigEndian.PutUint32(req[24:], length)
	req = append(req, payload...)
	if _, err := cl.c.Write(req); err != nil {
		return err
	}
	if typ == cmdDisc {
		return nil
	}
	var rep [16]byte
	if _, err := io.ReadFull(cl.c, rep[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(rep[:]) != nbdReplyMagic {
		return fmt.Errorf("nbd %s: bad reply magic %#x", op, binary.BigEndian.Uint32(rep[:]))
	}
	if got := binary.BigEndian.Uint64(rep[8:]); got != cl.cookie {
		return fmt.Errorf("nbd %s: reply cookie %d, want %d", op, got, cl.cookie)
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return &nbdError{op, syscall.Errno(e)}
	}
	if readInto != nil {
		if _, err := io.ReadFull(cl.c, readInto); err != nil {
			return err
		}
	}
	return nil
}

func (cl *client) ReadAt(p []byte, off uint64) error {
	return cl.request("read", cmdRead, 0, off, uint32(len(p)), nil, p)
}

func (cl *client) WriteAt(p []byte, off uint64, fua bool) error {
	var fl uint16
	if fua {
		fl = flagFUA
	}
	return cl.request("write", cmdWrite, fl, off, uint32(len(p)), p, nil)
}

func (cl *client) Flush() error { return cl.request("flush", cmdFlush, 0, 0, 0, nil, nil) }

func (cl *client) Trim(off uint64, n uint32) error {
	return cl.request("trim", cmdTrim, 0, off, n, nil, nil)
}

func (cl *client) Zero(off uint64, n uint32) error {
	return cl.request("write_zeroes", cmdWriteZeroes, 0, off, n, nil, nil)
}

func (cl *client) Close() error {
	cl.request("disc", cmdDisc, 0, 0, 0, nil, nil)
	return cl.c.Close()
}
