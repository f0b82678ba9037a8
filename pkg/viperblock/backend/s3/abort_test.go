package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	s3store "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
)

// TestGivenUpPutNeverArrives: a PUT whose context ends before the store
// took its body (the store was unreachable) is not delivered later. The
// server here accepts the connection but reads nothing until the client has
// given up; then it reads: it must find the connection reset, not the whole
// request. (Without SO_LINGER 0 the kernel would go on sending the queued
// body after the close, and a store that came back would apply the PUT.)
func TestGivenUpPutNeverArrives(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetReadBuffer(4096)
			conns <- c
		}
	}()
	s, err := s3store.New(context.Background(), s3store.Config{
		Bucket: "b", Endpoint: "http://" + ln.Addr().String(), Region: "us-east-1", PathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("k", "s", ""),
		MaxAttempts: 1, AttemptTimeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := bytes.Repeat([]byte{7}, 32<<20) // far more than the socket buffers hold
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err = s.Put(ctx, "obj", body)
	cancel()
	if err == nil {
		t.Fatal("a PUT nobody read succeeded")
	}
	var c net.Conn
	select {
	case c = <-conns:
	case <-time.After(10 * time.Second):
		t.Fatal("the client never connected")
	}
	defer c.Close()
	time.Sleep(200 * time.Millisecond) // let the close happen
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("the server read %d bytes and a clean end: the given-up request was delivered after the client closed", n)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server read %d bytes and then nothing for 20 s (want a reset)", n)
	}
	if n >= int64(len(body)) {
		t.Fatalf("the server read the whole body (%d bytes)", n)
	}
}
