// Command firstconn is the whole of the test image that
// hack/harness/containerd builds: "firstconn pause" is the pod sandbox's
// pause process, and "firstconn connect ADDR..." is a sidecar whose first
// actions are TCP connections, one after the other. For each it prints
// "ADDR ok MICROS" or "ADDR err MICROS ERROR", and it exits 0.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: firstconn pause | connect ADDR...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pause":
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
	case "connect":
		for _, addr := range os.Args[2:] {
			start := time.Now()
			conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
			took := time.Since(start).Microseconds()
			if err != nil {
				fmt.Printf("%s err %d %v\n", addr, took, err)
				continue
			}
			conn.Close()
			fmt.Printf("%s ok %d\n", addr, took)
		}
	default:
		os.Exit(2)
	}
}
