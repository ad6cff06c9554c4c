// Package wire implements Shoal's wire protocol (docs/protocol.md): the connection handshake,
// length-prefixed frame lists, the msgpack message header shared by every process, and a
// batched, concurrency-safe connection.
//
// Contract: a Conn is created by Dial or Accept, which perform the handshake; a listening port
// accepts through a Server, which also caps connections per role, drops idle and stalled ones
// and survives accept errors (EMFILE). One goroutine calls Recv; any number may call Send or
// Queue, whose messages a writer goroutine sends as soon as it is free, many per write. Close
// flushes and closes.
//
// Nothing a peer declares is trusted: a frame's buffer grows as its bytes arrive, and the one
// header decoder (DecodeHeader) checks every count against the bytes present, caps nesting,
// and refuses a malformed header with a *DecodeError naming the field (errors.Is ErrProtocol).
package wire
