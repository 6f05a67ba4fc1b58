package proxy

// bufferPool is the httputil.BufferPool of every reverse proxy: 32 KiB
// copy buffers, reused through a channel, which unlike sync.Pool takes a
// []byte back without allocating.
var bufferPool = newBytePool(256)

type bytePool struct{ c chan []byte }

func newBytePool(n int) *bytePool { return &bytePool{c: make(chan []byte, n)} }

func (p *bytePool) Get() []byte {
	select {
	case b := <-p.c:
		return b
	default:
		return make([]byte, 32<<10)
	}
}

func (p *bytePool) Put(b []byte) {
	select {
	case p.c <- b:
	default:
	}
}

var _ interface {
	Get() []byte
	Put([]byte)
} = (*bytePool)(nil)
