package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the traffic of the restart cases: started in
// a container (localnode.RunInContainer) with helperArg first, it runs a
// UDP stream or a UDP sink and reports counts on stdout.
const helperArg = "e2e-helper"

func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == helperArg {
		os.Exit(runHelper(os.Args[2], os.Args[3:]))
	}
	os.Exit(m.Run())
}

func runHelper(op string, args []string) int {
	switch op {
	case "stream": // ADDR: one datagram a millisecond, forever
		// Unconnected, so a denied peer fails each send (sendmsg4), not
		// the connect once.
		to, err := net.ResolveUDPAddr("udp4", args[0])
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		pc, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		var sent, eperm int
		last := time.Now()
		for seq := 0; ; seq++ {
			if _, err := pc.WriteTo([]byte(strconv.Itoa(seq)), to); errors.Is(err, syscall.EPERM) {
				eperm++
			} else if err == nil {
				sent++
			}
			if time.Since(last) > 50*time.Millisecond {
				fmt.Printf("TX %d EPERM %d\n", sent, eperm)
				last = time.Now()
			}
			time.Sleep(time.Millisecond)
		}
	case "sink": // PORT: print every datagram that arrives
		pc, err := net.ListenPacket("udp4", ":"+args[0])
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		fmt.Println("READY")
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				fmt.Println("ERR", err)
				return 1
			}
			fmt.Printf("RX %s %s\n", from, buf[:n])
		}
	case "resolve": // SERVER NAME: one lookup through SERVER
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", args[0])
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		ips, err := r.LookupHost(ctx, args[1])
		if err != nil {
			if errors.Is(err, syscall.EPERM) || strings.Contains(err.Error(), "operation not permitted") {
				fmt.Println("EPERM", err)
				return 1
			}
			fmt.Println("ERR", err)
			return 1
		}
		fmt.Println("ANSWER", strings.Join(ips, " "))
		return 0
	case "fqdnserve": // IP...: the FQDN test's DNS server (fqdn_linux_test.go)
		return serveFQDN(args)
	case "fqdn": // SERVER PROTO NAME QTYPE [PORT]: look up NAME, then connect to its first address
		return fqdnLookup(args)
	case "fqdnhold": // SERVER NAME PORT WAIT: connect to NAME, then use the connection again after WAIT
		return fqdnHold(args)
	case "fqdnrace": // SERVER N [WORKERS [FIRST]]: N fresh names, each looked up then connected to
		return fqdnRace(args)
	case "fqdnforge": // PROXYPORT IP: try to teach this container IP without the proxy
		return fqdnForge(args)
	}
	fmt.Fprintln(os.Stderr, "unknown helper op", op)
	return 2
}

// streamCounts reads the last "TX sent EPERM denied" line of a stream.
func streamCounts(out string) (sent, eperm int) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if _, err := fmt.Sscanf(lines[i], "TX %d EPERM %d", &sent, &eperm); err == nil {
			return sent, eperm
		}
	}
	return 0, 0
}

// received counts the datagrams a sink got.
func received(out string) []string {
	var rx []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "RX ") {
			rx = append(rx, l)
		}
	}
	return rx
}
