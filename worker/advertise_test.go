package worker

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestAdvertisedDataAddr(t *testing.T) {
	bound := &net.TCPAddr{IP: net.IPv6zero, Port: 42683}
	c := DefaultConfig()
	c.Host = "::"
	require.Equal(t, "[::]:42683", c.advertisedAddr(bound), "without AdvertiseHost the bound address is used")
	c.AdvertiseHost = "198.18.0.2"
	require.Equal(t, "198.18.0.2:42683", c.advertisedAddr(bound))
	require.NoError(t, c.Validate())
	c.AdvertiseHost = "0.0.0.0"
	require.ErrorContains(t, c.Validate(), `AdvertiseHost "0.0.0.0" is not an address peers can dial`)
}
