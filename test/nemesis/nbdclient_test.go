package nemesis

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"
)

// A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, simple
// replies), after test/nbd's: one request at a time, so the test knows
// exactly which requests the server acknowledged and when. Every request
// has a deadline; a transport error (or a deadline) breaks the client for
// good, as the outcome of the request is then unknown.

const (
	nbdOptMagic   = 0x49484156454F5054 // "IHAVEOPT"
	nbdRepMagic   = 0x3e889045565a9
	nbdReqMagic   = 0x25609513
	nbdReplyMagic = 0x67446698

	nbdOptGo  = 7
	nbdRepAck = 1
	nbdRepInf = 3

	cmdRead, cmdWrite, cmdDisc, cmdFlush = 0, 1, 2, 3
)

// serverError is an error the server returned for a request: the
// connection is still usable.
type serverError struct {
	op    string
	errno syscall.Errno
}

func (e *serverError) Error() string {
	return fmt.Sprintf("nbd %s: server error %d (%v)", e.op, int(e.errno), e.errno)
}

// nbdClient is one NBD connection; not safe for concurrent use.
type nbdClient struct {
	c        net.Conn
	size     uint64
	flags    uint16
	cookie   uint64
	deadline time.Duration // per request
	broken   error         // the transport error that ended the connection
}

func dialNBD(socket string, deadline time.Duration) (*nbdClient, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return nil, err
	}
	cl := &nbdClient{c: c, deadline: deadline}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := cl.handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	return cl, nil
}

func (cl *nbdClient) handshake() error {
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

// request sends one request and waits for its reply. A *serverError leaves
// the connection usable; any other error breaks it.
func (cl *nbdClient) request(op string, typ uint16, off uint64, length uint32, payload, readInto []byte) error {
	if cl.broken != nil {
		return cl.broken
	}
	err := cl.roundTrip(op, typ, off, length, payload, readInto)
	var se *serverError
	if err != nil && !errors.As(err, &se) {
		cl.broken = fmt.Errorf("nbd %s: connection lost: %w", op, err)
		cl.c.Close()
		return cl.broken
	}
	return err
}

func (cl *nbdClient) roundTrip(op string, typ uint16, off uint64, length uint32, payload, readInto []byte) error {
	_ = cl.c.SetDeadline(time.Now().Add(cl.deadline))
	cl.cookie++
	req := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(req, nbdReqMagic)
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
		return fmt.Errorf("bad reply magic %#x", binary.BigEndian.Uint32(rep[:]))
	}
	if got := binary.BigEndian.Uint64(rep[8:]); got != cl.cookie {
		return fmt.Errorf("reply cookie %d, want %d", got, cl.cookie)
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return &serverError{op, syscall.Errno(e)}
	}
	if readInto != nil {
		if _, err := io.ReadFull(cl.c, readInto); err != nil {
			return err
		}
	}
	return nil
}

func (cl *nbdClient) readAt(p []byte, off uint64) error {
	return cl.request("read", cmdRead, off, uint32(len(p)), nil, p)
}

func (cl *nbdClient) writeAt(p []byte, off uint64) error {
	return cl.request("write", cmdWrite, off, uint32(len(p)), p, nil)
}

func (cl *nbdClient) flush() error { return cl.request("flush", cmdFlush, 0, 0, nil, nil) }

// close disconnects politely if the connection still works, and closes it.
func (cl *nbdClient) close() {
	if cl.broken == nil {
		_ = cl.c.SetDeadline(time.Now().Add(5 * time.Second))
		_ = cl.roundTrip("disc", cmdDisc, 0, 0, nil, nil)
		cl.broken = errors.New("nbd: client closed")
	}
	cl.c.Close()
}
