// Package wire implements Shoal's wire protocol (docs/protocol.md): the connection handshake,
// length-prefixed frame lists, the msgpack message header shared by every process, and a
// batched, concurrency-safe connection.
//
// Contract: a Conn is created by Dial or Accept, which perform the handshake. One goroutine
// calls Recv; any number may call Send, which buffers and is flushed every FlushInterval or
// when FlushBytes are pending. Close flushes and closes. Every decoder checks declared lengths
// against Limits before allocating, so a hostile peer cannot make the process allocate more
// than the limits allow.
package wire
