package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// echoServer echoes every line back until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	conns := make(chan net.Conn, 100)
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c
			go func() { _, _ = io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(conns)
		for c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func startProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// roundTrip writes a line on c and reads it back, within timeout.
func roundTrip(c net.Conn, r *bufio.Reader, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = c.SetDeadline(start.Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return time.Since(start), err
	}
	if line != "ping\n" {
		return time.Since(start), errors.New("echo mismatch: " + line)
	}
	return time.Since(start), nil
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// TestModes switches one proxy through every mode, on one long-lived
// connection and on new ones, and checks what a client sees in each.
func TestModes(t *testing.T) {
	p := startProxy(t, echoServer(t))
	c, r := dial(t, p)

	// Pass.
	if d, err := roundTrip(c, r, time.Second); err != nil || d > 200*time.Millisecond {
		t.Fatalf("pass: %v after %s", err, d)
	}

	// Delay: 100 ms each way on the same connection.
	p.SetDelay(100 * time.Millisecond)
	if p.Mode() != Delay || p.Mode().String() != "delay" {
		t.Fatalf("mode %v", p.Mode())
	}
	d, err := roundTrip(c, r, 2*time.Second)
	if err != nil || d < 200*time.Millisecond || d > time.Second {
		t.Fatalf("delay 100ms: round trip %s %v, want 200ms..1s", d, err)
	}

	// Back to pass: fast again.
	p.SetPass()
	if d, err := roundTrip(c, r, time.Second); err != nil || d > 200*time.Millisecond {
		t.Fatalf("pass again: %v after %s", err, d)
	}

	// Blackhole: the existing connection stays open and silent...
	p.SetBlackhole()
	if _, err := roundTrip(c, r, 150*time.Millisecond); !isTimeout(err) {
		t.Fatalf("blackhole, existing connection: %v, want a timeout", err)
	}
	// ...and a new one is accepted but silent too.
	c2, r2 := dial(t, p)
	if _, err := roundTrip(c2, r2, 150*time.Millisecond); !isTimeout(err) {
		t.Fatalf("blackhole, new connection: %v, want a timeout", err)
	}

	// Reset: a new connection is reset; the existing one at its next chunk.
	p.SetReset()
	// The RST may even beat the dialer's own check of the connect.
	if c3, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		_, err = roundTrip(c3, bufio.NewReader(c3), time.Second)
		c3.Close()
		if !isReset(err) {
			t.Fatalf("reset, new connection: %v, want connection reset", err)
		}
	} else if !isReset(err) {
		t.Fatalf("reset, new connection: dial: %v, want connection reset", err)
	}
	if _, err := roundTrip(c, r, time.Second); err == nil || isTimeout(err) {
		t.Fatalf("reset, existing connection: %v, want it cut", err)
	}
	if p.Resets() == 0 {
		t.Error("no reset counted")
	}

	// Pass once more: new connections work.
	p.SetPass()
	c4, r4 := dial(t, p)
	if _, err := roundTrip(c4, r4, time.Second); err != nil {
		t.Fatalf("pass after reset: %v", err)
	}
	if p.Accepted() != 4 {
		t.Errorf("accepted %d connections, want 4", p.Accepted())
	}
}

// TestTargetDown: with the target gone, a connection is accepted and
// closed at once.
func TestTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	p := startProxy(t, dead)
	c, r := dial(t, p)
	if _, err := roundTrip(c, r, time.Second); err == nil || isTimeout(err) {
		t.Fatalf("target down: %v, want the connection closed", err)
	}
}

// TestCloseEndsEverything: Close closes every connection, including a
// blackholed one and one in the middle of a delay, and returns only once
// every goroutine of the proxy has ended.
func TestCloseEndsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	target := echoServer(t)
	p, err := Start(target)
	if err != nil {
		t.Fatal(err)
	}
	c1, r1 := dial(t, p)
	if _, err := roundTrip(c1, r1, time.Second); err != nil {
		t.Fatal(err)
	}
	p.SetDelay(time.Second)
	_, _ = c1.Write([]byte("slow\n"))
	p.SetBlackhole()
	c2, _ := dial(t, p)
	_, _ = c2.Write([]byte("lost\n"))
	time.Sleep(50 * time.Millisecond)
	if p.Open() == 0 {
		t.Fatal("no open connection counted")
	}
	start := time.Now()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %s", took)
	}
	if p.Open() != 0 {
		t.Errorf("%d connections still open after Close", p.Open())
	}
	for _, c := range []net.Conn{c1, c2} {
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 16)); err == nil || isTimeout(err) {
			t.Errorf("client connection still open after Close: %v", err)
		}
	}
	// The echo server's goroutines end with the test; the proxy's own must
	// be gone now (2 per echo connection remain at most).
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before+4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+4 {
		t.Errorf("%d goroutines after Close, %d before Start", n, before)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
