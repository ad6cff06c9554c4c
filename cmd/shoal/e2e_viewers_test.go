package main

import (
	"sync/atomic"
	"testing"

	"github.com/gorilla/websocket"
)

// openViewers connects n websocket viewers to the dashboard; each reads every frame until the
// test ends. It returns the count of frames received.
func openViewers(t testing.TB, dashboard string, n int) *atomic.Int64 {
	t.Helper()
	var frames atomic.Int64
	url := "ws://" + hostPort(dashboard) + "/ws"
	for i := 0; i < n; i++ {
		conn, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			t.Fatalf("viewer %d: %v", i, err)
		}
		t.Cleanup(func() { conn.Close() })
		go func() {
			for {
				if _, _, err := conn.ReadMessage(); err != nil {
					return
				}
				frames.Add(1)
			}
		}()
	}
	return &frames
}
