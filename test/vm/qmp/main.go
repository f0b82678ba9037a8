// Command qmp is the host side's client for QEMU's machine protocol (QMP)
// in test/vm/run.sh's live-migration scenarios. It talks to a QEMU started
// with -qmp unix:SOCKET,server=on,wait=off.
//
//	qmp SOCKET run CMD [ARGS]
//
// runs one command (ARGS: a JSON object) and prints its "return" value as
// JSON; an error reply exits 1 with QEMU's description.
//
//	qmp SOCKET status
//
// prints the VM's run state (query-status), e.g. "running", "inmigrate",
// "postmigrate", "paused".
//
//	qmp SOCKET migrate URI TIMEOUT [PAUSE]
//
// migrates the VM to the QEMU listening at URI (its -incoming) and polls
// query-migrate every 10 ms until the migration completed or failed, or
// TIMEOUT passed. It prints the events it saw with the time since the
// migrate command:
//
//	state <seconds> <status>
//
// and at the end one line the harness parses:
//
//	migrated downtime_ms=N total_ms=N setup_ms=N ram_mb=N completed_at=T
//
// (T: when the tool saw "completed", in seconds since the epoch)
// or, when the migration failed, "failed <QEMU's error>" and exit 1. With
// PAUSE ("pause"), the pause-before-switchover capability is set: the
// migration waits in state pre-switchover (the source's vCPUs stopped, its
// disks flushed but still active) and the tool prints "pre-switchover" and
// waits for a line on stdin before it continues (migrate-continue); the
// harness may kill the target meanwhile.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	c, err := dial(os.Args[1])
	if err != nil {
		fail(err)
	}
	defer c.conn.Close()
	args := os.Args[3:]
	switch os.Args[2] {
	case "run":
		if len(args) < 1 || len(args) > 2 {
			usage()
		}
		var a json.RawMessage
		if len(args) == 2 {
			a = json.RawMessage(args[1])
		}
		ret, err := c.run(args[0], a)
		if err != nil {
			fail(err)
		}
		fmt.Println(string(ret))
	case "status":
		var st struct {
			Status string `json:"status"`
		}
		if err := c.call("query-status", nil, &st); err != nil {
			fail(err)
		}
		fmt.Println(st.Status)
	case "migrate":
		if len(args) < 2 || len(args) > 3 {
			usage()
		}
		limit, err := time.ParseDuration(args[1])
		if err != nil {
			fail(err)
		}
		if err := c.migrate(args[0], limit, len(args) == 3 && args[2] == "pause"); err != nil {
			fail(err)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: qmp SOCKET run CMD [ARGS-JSON] | status | migrate URI TIMEOUT [pause]")
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "qmp:", err)
	os.Exit(1)
}

type client struct {
	conn net.Conn
	dec  *json.Decoder
}

// reply is one message from QEMU: a command's return or error, or an event.
type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

func dial(path string) (*client, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	c := &client{conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	var greeting map[string]json.RawMessage
	if err := c.dec.Decode(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, ok := greeting["QMP"]; !ok {
		conn.Close()
		return nil, errors.New("not a QMP greeting")
	}
	if _, err := c.run("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// run sends one command and returns its "return" value; events that arrive
// meanwhile are skipped.
func (c *client) run(cmd string, args json.RawMessage) (json.RawMessage, error) {
	msg := map[string]any{"execute": cmd}
	if len(args) > 0 {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		var r reply
		if err := c.dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		if r.Event != "" {
			continue
		}
		if r.Error != nil {
			return nil, fmt.Errorf("%s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		}
		return r.Return, nil
	}
}

func (c *client) call(cmd string, args any, out any) error {
	var a json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return err
		}
		a = b
	}
	ret, err := c.run(cmd, a)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(ret, out)
}

type migrateInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"`
	Downtime  int64  `json:"downtime"`
	SetupTime int64  `json:"setup-time"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
	} `json:"ram"`
}

func (c *client) migrate(uri string, limit time.Duration, pause bool) error {
	caps := []map[string]any{{"capability": "pause-before-switchover", "state": pause}}
	if err := c.call("migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return err
	}
	// The default bandwidth limit (32 MiB/s) would make every migration of
	// the guest's RAM take seconds; over a local socket there is no need.
	if err := c.call("migrate-set-parameters", map[string]any{"max-bandwidth": int64(4) << 30}, nil); err != nil {
		return err
	}
	start := time.Now()
	if err := c.call("migrate", map[string]any{"uri": uri}, nil); err != nil {
		return err
	}
	last := ""
	continued := false
	stdin := bufio.NewReader(os.Stdin)
	for {
		var mi migrateInfo
		if err := c.call("query-migrate", nil, &mi); err != nil {
			return err
		}
		now := time.Now()
		if mi.Status != last {
			fmt.Printf("state %.3f %s\n", time.Since(start).Seconds(), mi.Status)
			last = mi.Status
		}
		switch mi.Status {
		case "completed":
			ram := int64(0)
			if mi.RAM != nil {
				ram = mi.RAM.Transferred >> 20
			}
			fmt.Printf("migrated downtime_ms=%d total_ms=%d setup_ms=%d ram_mb=%d completed_at=%.6f\n",
				mi.Downtime, mi.TotalTime, mi.SetupTime, ram, float64(now.UnixNano())/1e9)
			return nil
		case "failed", "cancelled":
			fmt.Printf("failed %s\n", mi.ErrorDesc)
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		case "pre-switchover":
			// query-migrate may still say so just after migrate-continue.
			if continued {
				break
			}
			continued = true
			fmt.Println("pre-switchover")
			// The harness may kill the target before it answers; the
			// source then fails to send the device state.
			if _, err := stdin.ReadString('\n'); err != nil {
				return fmt.Errorf("pre-switchover: reading stdin: %w", err)
			}
			if err := c.call("migrate-continue", map[string]any{"state": "pre-switchover"}, nil); err != nil {
				return err
			}
		}
		if time.Since(start) > limit {
			return fmt.Errorf("migration still %q after %s", mi.Status, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
