package bypass

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The attacks of the second hardening round (TestBypassRound2). Each op
// prints its steps as the first round's do.

func runHelper2(op string, a []string) bool {
	switch op {
	case "failbind": // bind the app's port (fails), then connect to it
		ln, err := net.Listen("tcp", ":"+a[0])
		if err == nil {
			ln.Close()
		}
		report("bind", err, "")
		c, err := net.DialTimeout("tcp", a[1], 2*time.Second)
		if err != nil {
			report("connect", err, "")
			break
		}
		reply, err := roundTrip(c)
		report("send", err, reply)
	case "bindport": // bind PROTO PORT and let go
		report("bind", bindPort(a[0], a[1], false), "")
	case "reusebind": // join a SO_REUSEPORT group on a TCP port
		report("bind", bindPort("tcp", a[0], true), "")
	case "reuselisten": // serve a TCP port as a SO_REUSEPORT group member
		reuseListen(a[0])
	case "bindmany": // bind N UDP ports from BASE up
		bindMany(a[0], a[1])
	case "udpflood": // sendto IP on many ports for a while
		udpFlood(a[0], a[1])
	case "bcast": // UDP to a broadcast or multicast address, wait for an answer
		report("send", broadcast(a[0]), "")
	case "holdsock": // as UID, keep a connected UDP socket to ADDR open
		holdSock(a[0], a[1])
	case "stealfd": // as UID, take fd FD of process PID and send on it
		stealFD(a[0], a[1], a[2])
	case "udpecho4": // an IPv4-only UDP echo server on PORT
		udpEcho4(a[0])
	case "udpcount": // count datagrams on PORT by payload for SECONDS
		udpCount(a[0], a[1])
	case "udpstream": // send PAYLOAD to ADDR every millisecond for SECONDS
		udpStream(a[0], a[1], a[2])
	case "srh": // UDP to DST through the segment SEG (an SRH, IPV6_RTHDR)
		report(op, srhSend(a[0], a[1]), "")
	case "uring": // TCP connect to ADDR through io_uring, MODE normal or sqpoll
		report(op, uringConnect(a[0], a[1] == "sqpoll"), "")
	case "udplite":
		report(op, sendProto(unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE, a[0]), "")
	case "mptcp":
		report(op, sendProto(unix.SOCK_STREAM, unix.IPPROTO_MPTCP, a[0]), "")
	case "pingsock":
		report(op, pingSocket(a[0]), "")
	case "tfo":
		report(op, fastOpen(a[0]), "")
	default:
		return false
	}
	return true
}

func bindPort(proto, port string, reuse bool) error {
	lc := net.ListenConfig{}
	if reuse {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	if proto == "udp" {
		pc, err := lc.ListenPacket(context.Background(), "udp", ":"+port)
		if err == nil {
			pc.Close()
		}
		return err
	}
	ln, err := lc.Listen(context.Background(), "tcp", ":"+port)
	if err == nil {
		ln.Close()
	}
	return err
}

func reuseListen(port string) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", ":"+port)
	if err != nil {
		report("listen", err, "")
		return
	}
	fmt.Println(readyLine)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 512)
			n, _ := c.Read(buf)
			_, _ = c.Write(append([]byte("app "), buf[:n]...))
		}()
	}
}

func bindMany(base, count string) {
	b, _ := strconv.Atoi(base)
	n, _ := strconv.Atoi(count)
	var held []net.PacketConn
	var first error
	for i := 0; i < n; i++ {
		pc, err := net.ListenPacket("udp4", ":"+strconv.Itoa(b+i))
		if err != nil {
			if first == nil {
				first = err
			}
			continue
		}
		held = append(held, pc)
	}
	report("bindmany", first, strconv.Itoa(len(held)))
	fmt.Println(readyLine)
	time.Sleep(time.Hour) // hold them until stopped
}

func udpFlood(ip, seconds string) {
	secs, _ := strconv.Atoi(seconds)
	// No bind: the first sendto binds a port without post_bind, so the
	// pod's used-up port share does not stop the flood.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		report("flood", err, "")
		return
	}
	defer unix.Close(fd)
	fmt.Println(readyLine)
	sent := 0
	for end := time.Now().Add(time.Duration(secs) * time.Second); time.Now().Before(end); {
		for i := 0; i < 1000; i++ {
			// Distinct destination ports: distinct flows, so aggregation
			// alone cannot absorb the flood; the budget must.
			_ = unix.Sendto(fd, []byte("x"), 0, sockaddr4(ip, 10000+sent%20000))
			sent++
		}
	}
	report("flood", nil, strconv.Itoa(sent))
}

func broadcast(addr string) error {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
		return err
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
		return err
	}
	if err := unix.Sendto(fd, []byte("bypass\n"), 0, sockaddr4(ua.IP.String(), ua.Port)); err != nil {
		return err
	}
	buf := make([]byte, 512)
	_, _, err = unix.Recvfrom(fd, buf, 0)
	return err
}

// dropTo makes the process uid (and gid) uid with no capabilities, and
// dumpable again (a credential change clears it), as a container process
// started as that uid is.
func dropTo(uid string) error {
	id, err := strconv.Atoi(uid)
	if err != nil {
		return err
	}
	if err := syscall.Setgroups(nil); err != nil {
		return err
	}
	if err := syscall.Setresgid(id, id, id); err != nil {
		return err
	}
	if err := syscall.Setresuid(id, id, id); err != nil {
		return err
	}
	return unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
}

func holdSock(uid, addr string) {
	if err := dropTo(uid); err != nil {
		report("drop", err, "")
		return
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		report("dial", err, "")
		return
	}
	f, err := c.(*net.UDPConn).File() // a dup the process keeps open
	if err != nil {
		report("dial", err, "")
		return
	}
	fmt.Printf("%s %d %d\n", readyLine, os.Getpid(), f.Fd())
	time.Sleep(time.Hour)
}

func stealFD(uid, pid, fd string) {
	if err := dropTo(uid); err != nil {
		report("drop", err, "")
		return
	}
	p, _ := strconv.Atoi(pid)
	n, _ := strconv.Atoi(fd)
	pidfd, err := unix.PidfdOpen(p, 0)
	if err != nil {
		report("getfd", err, "")
		return
	}
	defer unix.Close(pidfd)
	sock, err := unix.PidfdGetfd(pidfd, n, 0)
	report("getfd", err, "")
	if err != nil {
		return
	}
	c, err := net.FileConn(os.NewFile(uintptr(sock), "stolen"))
	if err != nil {
		report("send", err, "")
		return
	}
	reply, err := roundTrip(c)
	report("send", err, reply)
}

func sendProto(typ, proto int, addr string) error {
	ap, err := netipAddrPort(addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, typ, proto)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 1})
	sa := sockaddr4(ap.Addr().String(), int(ap.Port()))
	if typ == unix.SOCK_STREAM {
		if err := connectTimeout(fd, sa, 2*time.Second); err != nil {
			return err
		}
		if _, err := unix.Write(fd, []byte("bypass\n")); err != nil {
			return err
		}
	} else if err := unix.Sendto(fd, []byte("bypass\n"), 0, sa); err != nil {
		return err
	}
	buf := make([]byte, 512)
	_, _, err = unix.Recvfrom(fd, buf, 0)
	return err
}

// connectTimeout connects a blocking socket, giving up after d (a SYN
// dropped at cgroup_skb is retransmitted for much longer).
func connectTimeout(fd int, sa unix.Sockaddr, d time.Duration) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	err := unix.Connect(fd, sa)
	if err == nil {
		return unix.SetNonblock(fd, false)
	}
	if err != unix.EINPROGRESS {
		return err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(pfd, int(d/time.Millisecond))
	if err != nil {
		return err
	}
	if n == 0 {
		return unix.ETIMEDOUT
	}
	if serr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || serr != 0 {
		if err != nil {
			return err
		}
		return unix.Errno(serr)
	}
	return unix.SetNonblock(fd, false)
}

func pingSocket(ip string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	echo := []byte{8, 0, 0, 0, 0, 0, 0, 1, 'b', 'y', 'p'}
	if err := unix.Sendto(fd, echo, 0, sockaddr4(ip, 0)); err != nil {
		return err
	}
	buf := make([]byte, 512)
	_, _, err = unix.Recvfrom(fd, buf, 0)
	return err
}

// fastOpen sends data in the SYN (TCP Fast Open, client side forced on
// with TCP_FASTOPEN_CONNECT), then waits for the answer.
func fastOpen(addr string) error {
	ap, err := netipAddrPort(addr)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 1})
	if err := unix.Sendto(fd, []byte("bypass\n"), unix.MSG_FASTOPEN, sockaddr4(ap.Addr().String(), int(ap.Port()))); err != nil {
		return err
	}
	buf := make([]byte, 512)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err == nil && n == 0 {
		return unix.ECONNRESET
	}
	return err
}

func udpEcho4(port string) {
	pc, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		report("listen", err, "")
		return
	}
	fmt.Println(readyLine)
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

func udpCount(port, seconds string) {
	secs, _ := strconv.Atoi(seconds)
	pc, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		report("count", err, "")
		return
	}
	defer pc.Close()
	fmt.Println(readyLine)
	counts := map[string]int{}
	buf := make([]byte, 1500)
	_ = pc.SetDeadline(time.Now().Add(time.Duration(secs) * time.Second))
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		counts[string(buf[:n])]++
	}
	b, _ := json.Marshal(counts)
	report("count", nil, string(b))
}

func udpStream(addr, payload, seconds string) {
	secs, _ := strconv.Atoi(seconds)
	ap, err := netipAddrPort(addr)
	if err != nil {
		report("stream", err, "")
		return
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		report("stream", err, "")
		return
	}
	defer unix.Close(fd)
	fmt.Println(readyLine)
	sent, denied := 0, 0
	for end := time.Now().Add(time.Duration(secs) * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if err := unix.Sendto(fd, []byte(payload), 0, sockaddr4(ap.Addr().String(), int(ap.Port()))); err != nil {
			denied++
		} else {
			sent++
		}
	}
	report("stream", nil, fmt.Sprintf("%d %d", sent, denied))
}

// srhSend sends a UDP datagram to dst (an [ip6]:port) with a segment
// routing header through seg, set with IPV6_RTHDR: unprivileged.
func srhSend(dst, seg string) error {
	ap, err := netipAddrPort(dst)
	if err != nil {
		return err
	}
	segIP := net.ParseIP(seg).To16()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// struct ipv6_sr_hdr: nexthdr, hdrlen (8-octet units after the first
	// 8), type 4, segments_left, last_entry, flags, tag; then the
	// segments, the final destination first.
	srh := []byte{0, 4, 4, 1, 1, 0, 0, 0}
	final := ap.Addr().As16()
	srh = append(srh, final[:]...)
	srh = append(srh, segIP...)
	if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srh)); err != nil {
		return fmt.Errorf("setsockopt IPV6_RTHDR: %w", err)
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: final}
	return unix.Sendto(fd, []byte("bypass\n"), 0, sa)
}

// uringConnect connects a TCP socket to addr with an io_uring
// IORING_OP_CONNECT, submitted by this task or, with sqpoll, by the ring's
// kernel thread, and returns the completion's error.
func uringConnect(addr string, sqpoll bool) error {
	ap, err := netipAddrPort(addr)
	if err != nil {
		return err
	}
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(sock)
	var params [120]byte // struct io_uring_params
	if sqpoll {
		binary.NativeEndian.PutUint32(params[8:], 1<<1)  // flags: IORING_SETUP_SQPOLL
		binary.NativeEndian.PutUint32(params[16:], 2000) // sq_thread_idle, ms
	}
	r, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 4, uintptr(unsafe.Pointer(&params[0])), 0)
	if errno != 0 {
		return fmt.Errorf("io_uring_setup: %w", errno)
	}
	ring := int(r)
	defer unix.Close(ring)
	u32 := func(off int) uint32 { return binary.NativeEndian.Uint32(params[off:]) }
	sqEntries, cqEntries := u32(0), u32(4)
	sqOff, cqOff := 40, 80 // struct io_sqring_offsets, io_cqring_offsets
	sqRing, err := unix.Mmap(ring, 0, int(u32(sqOff+24)+sqEntries*4), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap sq ring: %w", err)
	}
	defer unix.Munmap(sqRing)
	cqRing, err := unix.Mmap(ring, 0x8000000, int(u32(cqOff+20)+cqEntries*16), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap cq ring: %w", err)
	}
	defer unix.Munmap(cqRing)
	sqes, err := unix.Mmap(ring, 0x10000000, int(sqEntries*64), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap sqes: %w", err)
	}
	defer unix.Munmap(sqes)

	sa := make([]byte, 16) // struct sockaddr_in
	binary.NativeEndian.PutUint16(sa[0:], unix.AF_INET)
	binary.BigEndian.PutUint16(sa[2:], ap.Port())
	a4 := ap.Addr().As4()
	copy(sa[4:], a4[:])
	sqe := sqes[:64]
	clear(sqe)
	sqe[0] = 16 // IORING_OP_CONNECT
	binary.NativeEndian.PutUint32(sqe[4:], uint32(sock))
	binary.NativeEndian.PutUint64(sqe[8:], uint64(len(sa)))                          // off: addrlen
	binary.NativeEndian.PutUint64(sqe[16:], uint64(uintptr(unsafe.Pointer(&sa[0])))) // addr
	binary.NativeEndian.PutUint64(sqe[32:], 7)                                       // user_data

	at := func(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }
	mask := *at(sqRing, u32(sqOff+8))
	tail := atomic.LoadUint32(at(sqRing, u32(sqOff+4)))
	*at(sqRing, u32(sqOff+24)+(tail&mask)*4) = 0 // array[tail] = sqe 0
	atomic.StoreUint32(at(sqRing, u32(sqOff+4)), tail+1)
	flags := uintptr(1) // IORING_ENTER_GETEVENTS
	toSubmit := uintptr(1)
	if sqpoll {
		toSubmit = 0                                             // the kernel thread submits
		if atomic.LoadUint32(at(sqRing, u32(sqOff+16)))&1 != 0 { // IORING_SQ_NEED_WAKEUP
			flags |= 2 // IORING_ENTER_SQ_WAKEUP
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(ring), toSubmit, 1, flags, 0, 0); errno != 0 && errno != unix.EINTR {
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
		toSubmit = 0
		head, ctail := atomic.LoadUint32(at(cqRing, u32(cqOff))), atomic.LoadUint32(at(cqRing, u32(cqOff+4)))
		if head != ctail {
			cqe := cqRing[u32(cqOff+20)+(head&*at(cqRing, u32(cqOff+8)))*16:]
			res := int32(binary.NativeEndian.Uint32(cqe[8:]))
			atomic.StoreUint32(at(cqRing, u32(cqOff)), head+1)
			runtime.KeepAlive(sa)
			if res < 0 {
				return unix.Errno(-res)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return unix.ETIMEDOUT
		}
		time.Sleep(10 * time.Millisecond)
	}
}
