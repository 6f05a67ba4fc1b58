package main

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// TestBufferedWriter checks the access log's batching: a line is held
// until the next tick (not written per line), then flushed, and Close
// flushes the rest.
func TestBufferedWriter(t *testing.T) {
	var out lockedBuffer
	b := newBufferedWriter(&out, 4096, 50*time.Millisecond)
	b.Write([]byte("one\n"))
	if out.String() != "" {
		t.Fatal("a line was written at once, not batched")
	}
	deadline := time.Now().Add(5 * time.Second)
	for out.String() != "one\n" {
		if time.Now().After(deadline) {
			t.Fatalf("not flushed by the ticker: %q", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.Write([]byte("two\n"))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "one\ntwo\n" {
		t.Fatalf("after Close: %q", out.String())
	}
}

// lockedBuffer is what the flushing goroutine writes to while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
