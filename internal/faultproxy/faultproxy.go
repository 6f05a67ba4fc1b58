// Package faultproxy is a tiny TCP proxy for fault-injection tests on the
// loopback interface. It forwards every connection it accepts to one target
// and can be switched at runtime between four modes:
//
//   - [Pass]: bytes are forwarded as they come.
//   - [Delay]: every chunk read from either side is written to the other
//     side only after the configured delay (latency, not throttling: chunks
//     are pipelined, order is kept).
//   - [Blackhole]: connections are accepted but nothing is forwarded; what
//     either side sends is read and dropped, so a client waits forever for
//     an answer (until its own timeout).
//   - [Reset]: new connections are accepted and reset at once (RST, through
//     SO_LINGER 0); on existing connections the next chunk seen in either
//     direction resets both sides.
//
// A mode applies to new connections at accept time and to existing
// connections from the next chunk they carry. Every goroutine ends when the
// proxy is closed.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is what the proxy does with the traffic.
type Mode int32

// The modes of a [Proxy].
const (
	Pass Mode = iota
	Delay
	Blackhole
	Reset
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case Delay:
		return "delay"
	case Blackhole:
		return "blackhole"
	case Reset:
		return "reset"
	}
	return fmt.Sprintf("Mode(%d)", int32(m))
}

// Proxy forwards connections accepted on a loopback port to a target.
type Proxy struct {
	ln     net.Listener
	target string

	mode  atomic.Int32
	delay atomic.Int64 // nanoseconds, for Delay

	accepted atomic.Int64
	resets   atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Start listens on a free port of 127.0.0.1 and forwards to target
// ("host:port") in [Pass] mode until Close.
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// SetPass forwards traffic untouched.
func (p *Proxy) SetPass() { p.mode.Store(int32(Pass)) }

// SetDelay forwards every chunk d after it was read.
func (p *Proxy) SetDelay(d time.Duration) {
	p.delay.Store(int64(d))
	p.mode.Store(int32(Delay))
}

// SetBlackhole accepts connections and forwards nothing.
func (p *Proxy) SetBlackhole() { p.mode.Store(int32(Blackhole)) }

// SetReset resets new connections at once and existing ones at their next
// chunk.
func (p *Proxy) SetReset() { p.mode.Store(int32(Reset)) }

// Mode returns the current mode.
func (p *Proxy) Mode() Mode { return Mode(p.mode.Load()) }

// Accepted returns how many connections the proxy has accepted.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Resets returns how many connections the proxy has reset.
func (p *Proxy) Resets() int64 { return p.resets.Load() }

// Open returns how many connections (client and target sides) are open.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// CloseConns closes every open connection (both sides) and keeps
// accepting new ones.
func (p *Proxy) CloseConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Close stops accepting, closes every connection and waits for every
// goroutine of the proxy to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	err := p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// track registers c; it returns false (and closes c) once the proxy is
// closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient accept error (EMFILE, ECONNABORTED): back off.
			time.Sleep(5 * time.Millisecond)
			continue
		}
		p.accepted.Add(1)
		if !p.track(c) {
			continue
		}
		p.wg.Add(1)
		go p.handle(c)
	}
}

// reset closes c with an RST instead of a FIN.
func (p *Proxy) reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	p.resets.Add(1)
	c.Close()
}

func (p *Proxy) handle(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	switch Mode(p.mode.Load()) {
	case Reset:
		p.reset(client)
		return
	case Blackhole:
		_, _ = io.Copy(io.Discard, client)
		return
	}
	target, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		// The target is down: the client sees its connection closed.
		return
	}
	if !p.track(target) {
		return
	}
	defer p.untrack(target)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(client, target) }()
	go func() { defer wg.Done(); p.pipe(target, client) }()
	wg.Wait()
}

// chunk is bytes read from one side, due on the other side at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst chunk by chunk, applying the mode of the moment
// to each chunk. When either side ends, both are closed, so that the
// opposite pipe ends too.
func (p *Proxy) pipe(src, dst net.Conn) {
	queue := make(chan chunk, 64)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		failed := false
		for ch := range queue {
			if failed {
				continue // drain, so that the reader never blocks
			}
			if d := time.Until(ch.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(ch.b); err != nil {
				failed = true
				src.Close()
			}
		}
	}()
	defer func() {
		close(queue)
		<-writerDone
		src.Close()
		dst.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			switch Mode(p.mode.Load()) {
			case Pass:
				queue <- chunk{b: append([]byte(nil), buf[:n]...)}
			case Delay:
				queue <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(time.Duration(p.delay.Load()))}
			case Blackhole:
				// dropped
			case Reset:
				p.reset(src)
				p.reset(dst)
				return
			}
		}
		if err != nil {
			return
		}
	}
}
