package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	client "github.com/shoal-dev/shoal/clients/go"
	"github.com/shoal-dev/shoal/internal/wire"
	"github.com/stretchr/testify/require"
)

// writeTestPKI makes a CA and a certificate for 127.0.0.1 signed by it, as PEM files.
func writeTestPKI(t *testing.T, dir string) (caFile, certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "shoal test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600))
		return p
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", der), write("key.pem", "EC PRIVATE KEY", keyDER), pool
}

// With --tls-cert/--tls-key/--tls-ca every control and data connection is TLS: a TLS client
// computes and fetches results; a plain-TCP client is refused.
func TestE2ETLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key, pool := writeTestPKI(t, dir)
	c := startCluster(t, 2, "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca)
	ctx := ctxT(t, 60*time.Second)
	cl, err := client.Connect(ctx, c.Scheduler, client.Options{TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}})
	require.NoError(t, err)
	defer cl.Close()
	g := client.NewGraph()
	a := g.Go("tls-a", "inc", 1)
	b := g.Go("tls-b", "add", a, 40)
	futs, err := cl.Submit(ctx, g, b)
	require.NoError(t, err)
	v, err := futs[0].Result(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(42), asInt(t, v))

	short, cancel := ctxWithTimeout(3 * time.Second)
	defer cancel()
	_, err = client.Connect(short, c.Scheduler, client.Options{})
	require.Error(t, err, "a plain TCP client must not get through a TLS port")
	var herr *wire.HandshakeError
	require.False(t, errors.As(err, &herr) && herr.Status == wire.StatusOK)
}
