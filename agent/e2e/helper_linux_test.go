package e2e

import (
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
