package harness

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// HubbleCerts writes a CA, a Hubble server certificate for the cluster's
// names (*.<cluster>.hubble-grpc.cilium.io, as Cilium's chart issues) and
// a client certificate for Relay, and returns their paths.
func HubbleCerts(t testing.TB, cluster string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test hubble CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, dns []string) (string, string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: dns[0]}, DNSNames: dns,
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".crt", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kder)
	}
	ca = write("ca.crt", "CERTIFICATE", caDER)
	serverCert, serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth, []string{"*." + cluster + ".hubble-grpc.cilium.io"})
	clientCert, clientKey = leaf("relay", 3, x509.ExtKeyUsageClientAuth, []string{"relay." + cluster + ".hubble-relay.cilium.io"})
	return
}

// FreeAddr is a loopback TCP address free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// HubbleRelay is a running hubble-relay.
type HubbleRelay struct {
	// Addr is where it serves the Observer API (plaintext, loopback).
	Addr string
	log  bytes.Buffer
	cmd  *exec.Cmd
}

// Log is what Relay logged.
func (r *HubbleRelay) Log() string { return r.log.String() }

// StartHubbleRelay runs the real hubble-relay (make cilium-tools builds it
// from the pinned cilium module) with --peer-service at peer, dialing the
// Hubble servers it lists with mTLS (the CA and Relay's client
// certificate), until the test ends.
func StartHubbleRelay(t testing.TB, peer, cluster, ca, clientCert, clientKey string) *HubbleRelay {
	t.Helper()
	bin, err := Tool("hubble-relay")
	if err != nil {
		t.Fatalf("hubble-relay is needed (make cilium-tools): %v", err)
	}
	r := &HubbleRelay{Addr: FreeAddr(t)}
	r.cmd = exec.Command(bin, "serve", "--peer-service", peer, "--cluster-name", cluster,
		"--listen-address", r.Addr, "--health-listen-address", FreeAddr(t), "--gops=false", "--retry-timeout", "1s",
		"--disable-server-tls", "--tls-hubble-server-ca-files", ca,
		"--tls-hubble-client-cert-file", clientCert, "--tls-hubble-client-key-file", clientKey)
	r.cmd.Stdout, r.cmd.Stderr = &r.log, &r.log
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		if t.Failed() {
			t.Logf("hubble-relay log:\n%s", r.log.String())
		}
	})
	return r
}
