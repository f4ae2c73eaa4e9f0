package bypass

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the attacker: started in a container
// (localnode.RunInContainer) with helperArg as its first argument, it runs
// one attack and prints one result line per step.

const (
	helperArg    = "bypass-helper"
	resultPrefix = "STEP "
	readyLine    = "READY"
)

type step struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Errno   int    `json:"errno,omitempty"`
	Timeout bool   `json:"timeout,omitempty"`
	Error   string `json:"error,omitempty"`
	Reply   string `json:"reply,omitempty"`
	// Unsupported: the kernel lacks the protocol (SCTP).
	Unsupported bool `json:"unsupported,omitempty"`
}

func report(name string, err error, reply string) {
	s := step{Name: name, OK: err == nil, Reply: reply}
	if err != nil {
		s.Error = err.Error()
		var errno syscall.Errno
		if errors.As(err, &errno) {
			s.Errno = int(errno)
			s.Unsupported = errno == unix.EPROTONOSUPPORT || errno == unix.ESOCKTNOSUPPORT
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ETIMEDOUT) {
			s.Timeout = true
		}
	}
	b, _ := json.Marshal(s)
	fmt.Printf("%s%s\n", resultPrefix, b)
}

func runHelper(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bypass-helper OP ARGS...")
		return 2
	}
	switch op, a := args[0], args[1:]; op {
	case "udp": // unconnected sendto, then wait for the answer
		report(op, udpSendto(a[0]), "")
	case "udpconn":
		c, err := net.DialTimeout("udp", a[0], time.Second)
		if err != nil {
			report("connect", err, "")
			break
		}
		reply, err := roundTrip(c)
		report("send", err, reply)
	case "tcp":
		c, err := net.DialTimeout("tcp", a[0], 2*time.Second)
		if err != nil {
			report("connect", err, "")
			break
		}
		reply, err := roundTrip(c)
		report("send", err, reply)
	case "icmp":
		report(op, icmpEcho(a[0]), "")
	case "icmp6":
		report(op, icmp6Send(a[0]), "")
	case "raw":
		report(op, rawUDP(a[0], a[1], false), "")
	case "frag":
		report(op, rawUDP(a[0], a[1], true), "")
	case "large":
		report(op, largeUDP(a[0]), "")
	case "packet":
		report(op, packetUDP(a[0], a[1], a[2]), "")
	case "udprecv":
		udpRecv(a[0])
	case "sctp":
		report(op, sctpConnect(a[0]), "")
	case "childcg":
		// The container makes a cgroup of its own and moves into it.
		dir := filepath.Join(a[0], "bypass-child")
		if err := os.Mkdir(dir, 0o755); err != nil {
			report("mkdir", err, "")
			break
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0"), 0); err != nil {
			report("move", err, "")
			break
		}
		report("move", nil, "")
		c, err := net.DialTimeout("tcp", a[1], 2*time.Second)
		if err == nil {
			_, err = roundTrip(c)
		}
		report("tcp", err, "")
	case "prepolicy":
		prePolicy(a[0], a[1], a[2])
	case "passfd":
		passFD(a[0], a[1])
	case "recvfd":
		recvFD(a[0], a[1])
	default:
		if runHelper2(op, a) {
			break
		}
		fmt.Fprintln(os.Stderr, "unknown op", op)
		return 2
	}
	return 0
}

func roundTrip(c net.Conn) (string, error) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(c, "bypass\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func udpSendto(addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	network := "udp4"
	if ua.IP.To4() == nil {
		network = "udp6"
	}
	pc, err := net.ListenPacket(network, ":0")
	if err != nil {
		return err
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte("bypass\n"), ua); err != nil {
		return err
	}
	if ua.IP.To4() == nil {
		return nil // no IPv6 peer answers; the send is what counts
	}
	_ = pc.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	_, _, err = pc.ReadFrom(buf)
	return err
}

func icmpEcho(ip string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	msg := []byte{8, 0, 0, 0, 0x12, 0x34, 0, 1, 'b', 'y', 'p', 's'}
	binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	if err := unix.Sendto(fd, msg, 0, sockaddr4(ip, 0)); err != nil {
		return err
	}
	tv := unix.NsecToTimeval(int64(time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 1500)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		ihl := int(buf[0]&0xf) * 4
		if n > ihl && buf[ihl] == 0 { // echo reply
			return nil
		}
	}
}

func icmp6Send(ip string) error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet6{}
	sa.Addr = netip.MustParseAddr(ip).As16()
	// The kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets.
	return unix.Sendto(fd, []byte{128, 0, 0, 0, 0x12, 0x34, 0, 1}, 0, sa)
}

func sockaddr4(ip string, port int) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Port: port, Addr: netip.MustParseAddr(ip).As4()}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// rawUDP sends a hand-built IPv4/UDP datagram through an IPPROTO_RAW
// (IP_HDRINCL) socket, whole or as two fragments. For fragments it sends
// the non-first fragment first: it carries no ports, so the datapath can
// only decide it by its fragment offset. It returns the first error.
func rawUDP(ip, port string, fragment bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var src [4]byte
	if ifaces, err := net.InterfaceAddrs(); err == nil {
		for _, a := range ifaces {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
				copy(src[:], n.IP.To4())
			}
		}
	}
	dst := netip.MustParseAddr(ip).As4()
	p, _ := strconv.Atoi(port)
	payload := make([]byte, 64)
	copy(payload, "bypass")
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], uint16(p))
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	ipHdr := func(body []byte, offset8 int, more bool) []byte {
		h := make([]byte, 20, 20+len(body))
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(body)))
		binary.BigEndian.PutUint16(h[4:], 0x4242)
		frag := uint16(offset8)
		if more {
			frag |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], frag)
		h[8], h[9] = 64, unix.IPPROTO_UDP
		copy(h[12:], src[:])
		copy(h[16:], dst[:])
		binary.BigEndian.PutUint16(h[10:], checksum(h))
		return append(h, body...)
	}
	sa := sockaddr4(ip, 0)
	if !fragment {
		return unix.Sendto(fd, ipHdr(udp, 0, false), 0, sa)
	}
	// 8+64 bytes: first fragment = UDP header + 32 bytes, second = 40 bytes at offset 40 (5 units).
	err2 := unix.Sendto(fd, ipHdr(udp[40:], 5, false), 0, sa)
	err1 := unix.Sendto(fd, ipHdr(udp[:40], 0, true), 0, sa)
	if err2 != nil {
		return fmt.Errorf("non-first fragment: %w", err2)
	}
	if err1 != nil {
		return fmt.Errorf("first fragment: %w", err1)
	}
	return nil
}

func sctpConnect(addr string) error {
	ap := netip.MustParseAddrPort(addr)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, unix.IPPROTO_SCTP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, sockaddr4(ap.Addr().String(), int(ap.Port())))
	if err != unix.EINPROGRESS {
		return err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, 2000)
	if err != nil {
		return err
	}
	if n == 0 {
		return unix.ETIMEDOUT
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soerr != 0 {
		return unix.Errno(soerr)
	}
	return nil
}

// prePolicy opens a connected UDP and a TCP socket before the policy
// exists, proves both work, then waits for signal (a file) and uses them
// again.
func prePolicy(udpAddr, tcpAddr, signal string) {
	u, err := net.DialTimeout("udp", udpAddr, time.Second)
	if err != nil {
		report("udp-open", err, "")
		return
	}
	t, err := net.DialTimeout("tcp", tcpAddr, 2*time.Second)
	if err != nil {
		report("tcp-open", err, "")
		return
	}
	tr := bufio.NewReader(t)
	use := func(c net.Conn, r *bufio.Reader) error {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := fmt.Fprintf(c, "bypass\n"); err != nil {
			return err
		}
		if r == nil {
			buf := make([]byte, 512)
			_, err := c.Read(buf)
			return err
		}
		_, err := r.ReadString('\n')
		return err
	}
	report("udp-before", use(u, nil), "")
	report("tcp-before", use(t, tr), "")
	fmt.Println(readyLine)
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(signal); err == nil {
			break
		}
	}
	report("udp-after", use(u, nil), "")
	report("tcp-after", use(t, tr), "")
}

// passFD is the app: it opens a UDP socket connected to addr and an
// unconnected one, and hands both to whoever connects to the unix socket.
func passFD(path, addr string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		report("listen", err, "")
		return
	}
	defer ln.Close()
	conn, err := net.DialTimeout("udp", addr, time.Second)
	if err != nil {
		report("open", err, "")
		return
	}
	unconn, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		report("open", err, "")
		return
	}
	cf, _ := conn.(*net.UDPConn).File()
	uf, _ := unconn.(*net.UDPConn).File()
	fmt.Println(readyLine)
	c, err := ln.Accept()
	if err != nil {
		report("accept", err, "")
		return
	}
	defer c.Close()
	_, _, err = c.(*net.UnixConn).WriteMsgUnix([]byte("x"), unix.UnixRights(int(cf.Fd()), int(uf.Fd())), nil)
	report("pass", err, "")
	buf := make([]byte, 1)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Read(buf) // until the sidecar is done
}

// recvFD is the sidecar: it takes the app's sockets and sends through them.
func recvFD(path, addr string) {
	c, err := net.Dial("unix", path)
	if err != nil {
		report("dial", err, "")
		return
	}
	defer c.Close()
	buf, oob := make([]byte, 1), make([]byte, 128)
	_, oobn, _, _, err := c.(*net.UnixConn).ReadMsgUnix(buf, oob)
	if err != nil {
		report("recv", err, "")
		return
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		report("recv", fmt.Errorf("control message: %v", err), "")
		return
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 2 {
		report("recv", fmt.Errorf("rights: %v %d", err, len(fds)), "")
		return
	}
	wait := func(fd int) error {
		tv := unix.NsecToTimeval(int64(time.Second))
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		_, _, err := unix.Recvfrom(fd, make([]byte, 512), 0)
		return err
	}
	err = unix.Send(fds[0], []byte("bypass\n"), 0)
	if err == nil {
		err = wait(fds[0])
	}
	report("connected-send", err, "")
	ap := netip.MustParseAddrPort(addr)
	err = unix.Sendto(fds[1], []byte("bypass\n"), 0, sockaddr4(ap.Addr().String(), int(ap.Port())))
	if err == nil {
		err = wait(fds[1])
	}
	report("unconnected-sendto", err, "")
}

// largeUDP sends one 4000-byte datagram with DF off (the kernel fragments
// it on the 1500-byte link) and waits for the answer.
func largeUDP(addr string) error {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return err
	}
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
	}); err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	if _, err := c.WriteTo([]byte(strings.Repeat("f", 4000)+"\n"), ua); err != nil {
		return err
	}
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _, err = c.ReadFrom(make([]byte, 8192))
	return err
}

// packetUDP writes a whole Ethernet frame carrying IPv4/UDP to dstIP:port
// on eth0 through an AF_PACKET socket: below the IP stack, so below
// cgroup_skb.
func packetUDP(dstMAC, dstIP, port string) error {
	ifi, err := net.InterfaceByName("eth0")
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(dstMAC)
	if err != nil {
		return err
	}
	var src net.IP
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			src = n.IP.To4()
		}
	}
	if src == nil {
		return errors.New("eth0 has no IPv4 address")
	}
	p, _ := strconv.Atoi(port)
	payload := []byte("bypass over AF_PACKET\n")
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40001)
	binary.BigEndian.PutUint16(udp[2:], uint16(p))
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...) // checksum 0: none, valid for IPv4
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	ip[8], ip[9] = 64, unix.IPPROTO_UDP
	copy(ip[12:], src)
	dst := netip.MustParseAddr(dstIP).As4()
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	frame := append(append(append([]byte{}, mac...), ifi.HardwareAddr...), 0x08, 0x00)
	frame = append(append(frame, ip...), udp...)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6, Protocol: 0x0008})
}

// udpRecv reports the first datagram that arrives on port within 5s.
func udpRecv(port string) {
	pc, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		report("recv", err, "")
		return
	}
	defer pc.Close()
	fmt.Println(readyLine)
	_ = pc.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		report("recv", err, "")
		return
	}
	report("recv", nil, from.String()+" "+strings.TrimSpace(string(buf[:n])))
}
