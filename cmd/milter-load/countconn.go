package main

import (
	"encoding/binary"
	"net"
	"sync/atomic"
)

// IOStats counts what crossed the client side of the milter connections.
// Reads and Writes are calls on the socket (each one a system call, as
// go-milter does not buffer reads); Packets are milter protocol packets,
// found by following the length prefix of each one (every packet is a
// 4-byte big-endian length, then that many bytes).
type IOStats struct {
	Reads, Writes         atomic.Int64
	BytesIn, BytesOut     atomic.Int64
	PacketsIn, PacketsOut atomic.Int64
}

// IOSnapshot is a plain copy of IOStats.
type IOSnapshot struct {
	Reads, Writes         int64
	BytesIn, BytesOut     int64
	PacketsIn, PacketsOut int64
}

func (s *IOStats) snapshot() IOSnapshot {
	return IOSnapshot{
		Reads: s.Reads.Load(), Writes: s.Writes.Load(),
		BytesIn: s.BytesIn.Load(), BytesOut: s.BytesOut.Load(),
		PacketsIn: s.PacketsIn.Load(), PacketsOut: s.PacketsOut.Load(),
	}
}

// frameCounter follows the milter framing of one direction of a stream.
// It is used by one goroutine only (go-milter's client is synchronous).
type frameCounter struct {
	hdr  [4]byte
	nhdr int    // bytes of the length prefix seen so far
	left uint32 // payload bytes still to come in the current packet
}

// feed consumes p and returns how many packets were completed.
func (f *frameCounter) feed(p []byte) int64 {
	var done int64
	for len(p) > 0 {
		if f.left == 0 {
			n := copy(f.hdr[f.nhdr:], p)
			f.nhdr += n
			p = p[n:]
			if f.nhdr < 4 {
				break
			}
			f.nhdr = 0
			f.left = binary.BigEndian.Uint32(f.hdr[:])
			if f.left == 0 {
				// Invalid for milter, but it is a whole packet.
				done++
			}
			continue
		}
		n := uint32(len(p))
		if n > f.left {
			n = f.left
		}
		f.left -= n
		p = p[n:]
		if f.left == 0 {
			done++
		}
	}
	return done
}

// countingConn counts reads, writes, bytes and packets of one connection
// into shared IOStats.
type countingConn struct {
	net.Conn
	st      *IOStats
	in, out frameCounter
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.st.Reads.Add(1)
	if n > 0 {
		c.st.BytesIn.Add(int64(n))
		c.st.PacketsIn.Add(c.in.feed(p[:n]))
	}
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.st.Writes.Add(1)
	if n > 0 {
		c.st.BytesOut.Add(int64(n))
		c.st.PacketsOut.Add(c.out.feed(p[:n]))
	}
	return n, err
}

// countingDialer makes one connection, counted into st when st is set,
// and remembers it so that a failed negotiation can close it.
type countingDialer struct {
	d    net.Dialer
	st   *IOStats
	conn net.Conn
}

func (d *countingDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := d.d.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	if d.st != nil {
		c = &countingConn{Conn: c, st: d.st}
	}
	d.conn = c
	return c, nil
}
