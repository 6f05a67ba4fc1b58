package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Issue 13 item 5: slow clients. Every test here talks raw TCP to the real
// chain behind a real listener, with timeouts short enough (set through
// the config) to keep the suite fast. Every loop is bounded in count and
// time.

// connGoroutines counts the goroutines serving an HTTP connection (the
// gateway's and the test upstream's): a connection held open holds one.
func connGoroutines() int {
	buf := make([]byte, 1<<20)
	for range 4 {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "net/http.(*conn).serve(")
		}
		buf = make([]byte, 2*len(buf))
	}
	return strings.Count(string(buf), "net/http.(*conn).serve(")
}

// eventually polls cond every 20 ms for at most d.
func eventually(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// trickle writes body one byte at a time, every gap, until it is done,
// stop is closed or a write fails. It returns when the writer has ended.
func trickle(conn net.Conn, body string, gap time.Duration, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range len(body) {
			if i > 0 {
				select {
				case <-stop:
					return
				case <-time.After(gap):
				}
			}
			if _, err := conn.Write([]byte{body[i]}); err != nil {
				return
			}
		}
	}()
	return done
}

// readOne reads one response from br, its body included.
func readOne(t *testing.T, br *bufio.Reader) (*http.Response, []byte) {
	t.Helper()
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatalf("reading the response body: %v", err)
	}
	return res, b
}

// wantShape checks a raw response against the standard error shape.
func wantShape(t *testing.T, res *http.Response, body []byte, status int, code, message string) {
	t.Helper()
	if res.StatusCode != status || codeOf(body) != code {
		t.Fatalf("got %d %s, want %d %s", res.StatusCode, body, status, code)
	}
	if message != "" && !strings.Contains(string(body), `"message":"`+message+`"`) {
		t.Errorf("body %s, want the message %q", body, message)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if res.ContentLength != int64(len(body)) {
		t.Errorf("Content-Length %d for a body of %d bytes", res.ContentLength, len(body))
	}
	if res.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}
}

// closedWithin reports whether the server closes conn within d, reading
// and discarding whatever else it sends.
func closedWithin(conn net.Conn, br *bufio.Reader, d time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, br)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestSlowRequestBody guards issue 13's body rule: a request body that
// has not fully arrived server.read_timeout after deskgate starts
// forwarding it gets 408 REQUEST_TIMEOUT in the standard shape, the
// connection is closed and the upstream connection released; a body that
// is slow but within the timeout is forwarded whole, and the connection
// stays usable; a refused request's unread body cannot hold the
// connection either.
func TestSlowRequestBody(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}"}
server: {read_timeout: 1s, write_timeout: 1s}
routes: [{pattern: "/api/v1/", auth: secret, rate_limit: false}]
`})
	head := func(length int, extra string) string {
		return "POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\nX-API-Key: " + skLive +
			"\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(length) + "\r\n" + extra + "\r\n"
	}

	t.Run("stalled body", func(t *testing.T) {
		base := connGoroutines()
		hits := h.hitCount()
		conn, err := net.Dial("tcp", gwAddr(h))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		if _, err := io.WriteString(conn, head(10, "X-Request-Id: slow-body\r\n")); err != nil {
			t.Fatal(err)
		}
		// One byte every 300 ms: the ten would take 2.7 s.
		stop := make(chan struct{})
		defer close(stop)
		trickle(conn, "0123456789", 300*time.Millisecond, stop)

		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(conn)
		res, body := readOne(t, br)
		elapsed := time.Since(start)
		wantShape(t, res, body, http.StatusRequestTimeout, "REQUEST_TIMEOUT", "Délai de requête dépassé")
		if elapsed < 900*time.Millisecond || elapsed > 2500*time.Millisecond {
			t.Errorf("answered after %s, want about server.read_timeout (1s)", elapsed)
		}
		if !res.Close {
			t.Error("408 without Connection: close")
		}
		if !closedWithin(conn, br, 2*time.Second) {
			t.Error("the connection stayed open after the 408")
		}
		// The upstream saw its connection end before the body did.
		if !eventually(3*time.Second, func() bool { return h.hitCount() > hits }) {
			t.Fatal("the upstream request is still open")
		}
		if b := h.lastHit().Body; len(b) >= 10 {
			t.Errorf("the upstream got the whole body %q", b)
		}
		if !eventually(3*time.Second, func() bool { return connGoroutines() <= base }) {
			t.Errorf("%d connection goroutines, %d before: one is still held", connGoroutines(), base)
		}
		if logs := h.logs.String(); !strings.Contains(logs, `"request_id":"slow-body"`) || !strings.Contains(logs, `"status":408`) {
			t.Errorf("no access log line with status 408:\n%s", logs)
		}
	})

	t.Run("slow body within the timeout", func(t *testing.T) {
		conn, err := net.Dial("tcp", gwAddr(h))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(conn)
		io.WriteString(conn, head(4, ""))
		stop := make(chan struct{})
		defer close(stop)
		<-trickle(conn, "abcd", 150*time.Millisecond, stop)
		res, body := readOne(t, br)
		if res.StatusCode != 200 {
			t.Fatalf("status %d %s", res.StatusCode, body)
		}
		if got := string(h.lastHit().Body); got != "abcd" {
			t.Errorf("upstream got %q", got)
		}
		// Keep-alive survives: after longer than read_timeout and
		// write_timeout idle, a request with a body and then one that
		// net/http refuses by itself are both answered.
		time.Sleep(1200 * time.Millisecond)
		io.WriteString(conn, head(2, "")+"{}")
		if res, body := readOne(t, br); res.StatusCode != 200 {
			t.Fatalf("second request on the connection: %d %s", res.StatusCode, body)
		}
		time.Sleep(1200 * time.Millisecond)
		io.WriteString(conn, "POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
		res, body = readOne(t, br)
		if res.StatusCode != 400 || codeOf(body) != "BAD_REQUEST" {
			t.Fatalf("malformed request after idle: %d %s, want 400 BAD_REQUEST", res.StatusCode, body)
		}
	})

	t.Run("refused request with a stalled body", func(t *testing.T) {
		base := connGoroutines()
		hits := h.hitCount()
		conn, err := net.Dial("tcp", gwAddr(h))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// No key: refused at once, before the body is read. net/http
		// then reads the rest of the body to reuse the connection.
		io.WriteString(conn, "POST /api/v1/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n")
		stop := make(chan struct{})
		defer close(stop)
		trickle(conn, strings.Repeat("x", 20), 200*time.Millisecond, stop)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(conn)
		res, body := readOne(t, br)
		wantShape(t, res, body, http.StatusUnauthorized, "AUTH_API_KEY_MISSING", "")
		if !closedWithin(conn, br, 3*time.Second) {
			t.Error("a refused request's trickling body held the connection past server.read_timeout")
		}
		if !eventually(3*time.Second, func() bool { return connGoroutines() <= base }) {
			t.Errorf("%d connection goroutines, %d before", connGoroutines(), base)
		}
		if h.hitCount() != hits {
			t.Error("forwarded")
		}
	})
}

// bigUpstream answers GET /big/<n> with n bytes, written 32 KiB at a time;
// aborted counts the answers it could not finish.
func bigUpstream(aborted *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/big/"))
		if err != nil {
			http.Error(w, "bad size", 400)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		buf := make([]byte, 32<<10)
		for n > 0 {
			k := min(n, len(buf))
			if _, err := w.Write(buf[:k]); err != nil {
				aborted.Add(1)
				return
			}
			n -= k
		}
	})
}

// slowReader reads at most max bytes per Read, sleeping every before each.
type slowReader struct {
	r     io.Reader
	max   int
	every time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.every)
	return s.r.Read(p[:min(len(p), s.max)])
}

// TestClientNeverReads guards issue 13's write rule: a client that asks
// for a large answer and never reads it is cut server.write_timeout after
// its socket buffers fill (the handler, the connection's goroutine and
// the upstream connection are freed), while a client that reads a 2 MB
// answer slowly but steadily, for several times write_timeout, gets all
// of it.
func TestClientNeverReads(t *testing.T) {
	var aborted atomic.Int32
	h := newHarness(t, harnessOpt{upstream: bigUpstream(&aborted), yaml: `
upstream: {url: "${UPSTREAM}"}
server: {write_timeout: 300ms}
routes: [{pattern: "GET /big/", auth: none, rate_limit: false}]
`})

	t.Run("never reads", func(t *testing.T) {
		base := connGoroutines()
		const size = 32 << 20 // far more than the socket buffers hold
		conn, err := net.Dial("tcp", gwAddr(h))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		io.WriteString(conn, "GET /big/"+strconv.Itoa(size)+" HTTP/1.1\r\nHost: x\r\nX-Request-Id: never-reads\r\n\r\n")
		// The handler ends (its access log line) with nothing read.
		if !eventually(5*time.Second, func() bool { return strings.Contains(h.logs.String(), `"request_id":"never-reads"`) }) {
			t.Fatal("the handler of a client that never reads is still writing after 5s")
		}
		if el := time.Since(start); el < 300*time.Millisecond {
			t.Errorf("cut after %s, before server.write_timeout", el)
		}
		if !eventually(3*time.Second, func() bool { return connGoroutines() <= base }) {
			t.Errorf("%d connection goroutines, %d before: one is still held", connGoroutines(), base)
		}
		if !eventually(3*time.Second, func() bool { return aborted.Load() == 1 }) {
			t.Error("the upstream is still sending")
		}
		// What was already in the buffers, then the end: not the answer.
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := io.Copy(io.Discard, conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after the handler ended (%d bytes read)", n)
		}
		if n >= size {
			t.Errorf("read %d bytes: the whole answer", n)
		}
	})

	t.Run("slow steady reader", func(t *testing.T) {
		const size = 2 << 20
		conn, err := net.Dial("tcp", gwAddr(h))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		start := time.Now()
		io.WriteString(conn, "GET /big/"+strconv.Itoa(size)+" HTTP/1.1\r\nHost: x\r\n\r\n")
		// 16 KiB every 10 ms: about 1.3 s for the whole, four times
		// write_timeout.
		br := bufio.NewReaderSize(&slowReader{r: conn, max: 16 << 10, every: 10 * time.Millisecond}, 16<<10)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, res.Body)
		if err != nil || n != size || res.StatusCode != 200 {
			t.Fatalf("status %d, %d of %d bytes, error %v", res.StatusCode, n, size, err)
		}
		if el := time.Since(start); el < 900*time.Millisecond {
			t.Errorf("read in %s: not slow enough to prove anything", el)
		}
		if aborted.Load() != 1 {
			t.Error("the upstream could not finish the answer")
		}
	})
}

// TestUpgradeOutlivesWriteTimeout guards write_timeout's meaning on an
// upgraded connection: a stuck write, not silence. A WebSocket quiet for
// longer than write_timeout still carries the next message.
func TestUpgradeOutlivesWriteTimeout(t *testing.T) {
	h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}"}
server: {write_timeout: 200ms}
routes: [{pattern: "/api/v1/", auth: secret, rate_limit: false, websocket: true}]
`, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		for range 2 {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("echo:" + line)
			brw.Flush()
		}
	})})
	conn, err := net.Dial("tcp", gwAddr(h))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nX-API-Key: "+skLive+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", res, err)
	}
	for _, msg := range []string{"one", "two"} {
		time.Sleep(500 * time.Millisecond)
		io.WriteString(conn, msg+"\n")
		if got, err := br.ReadString('\n'); err != nil || got != "echo:"+msg+"\n" {
			t.Fatalf("after %s quiet: %q %v", msg, got, err)
		}
	}
}

// TestUpstreamConnCap guards issue 13's upstream rule: with
// upstream.max_conns_per_host 2 and two requests held by a hanging
// upstream, a third never reaches the upstream: it waits for a free
// connection up to its route's timeout, then gets 503
// SERVICE_UNAVAILABLE (logged as such); one freed in time serves it.
func TestUpstreamConnCap(t *testing.T) {
	var inFlight, most atomic.Int32
	release := make(chan struct{}, 2)
	h := newHarness(t, harnessOpt{yaml: `
upstream: {url: "${UPSTREAM}", timeout: 500ms, max_conns_per_host: 2}
routes:
  - {pattern: "/slow/", auth: none, rate_limit: false, timeout: 10s}
  - {pattern: "/fast/", auth: none, rate_limit: false}
`, upstream: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if strings.HasPrefix(r.URL.Path, "/slow/") {
			select {
			case <-release:
			case <-time.After(8 * time.Second):
			}
		}
		io.WriteString(w, `{"ok":true}`)
	})})
	get := func(path string) <-chan int {
		c := make(chan int, 1)
		go func() {
			res, err := h.gw.Client().Get(h.gw.URL + path)
			if err != nil {
				c <- 0
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			c <- res.StatusCode
		}()
		return c
	}
	slow1, slow2 := get("/slow/1"), get("/slow/2")
	if !eventually(5*time.Second, func() bool { return inFlight.Load() == 2 }) {
		t.Fatalf("%d requests at the upstream, want the two slow ones", inFlight.Load())
	}

	start := time.Now()
	r := h.do("GET", "/fast/3", "")
	elapsed := time.Since(start)
	h.wantError(r, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE")
	if elapsed < 450*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("refused after %s, want the route's timeout (500ms)", elapsed)
	}
	if !strings.Contains(h.logs.String(), "upstream.max_conns_per_host (2) all in use") {
		t.Errorf("the log does not say why:\n%s", h.logs.String())
	}

	// A connection freed while the request waits serves it.
	fast := get("/fast/4")
	time.Sleep(100 * time.Millisecond)
	release <- struct{}{}
	select {
	case code := <-fast:
		if code != 200 {
			t.Errorf("request that waited for a free connection: %d, want 200", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting request was never answered")
	}
	release <- struct{}{}
	for i, c := range []<-chan int{slow1, slow2} {
		if code := <-c; code != 200 {
			t.Errorf("slow request %d: %d", i+1, code)
		}
	}
	if m := most.Load(); m != 2 {
		t.Errorf("the upstream had %d requests at once, want at most max_conns_per_host (2)", m)
	}
}
