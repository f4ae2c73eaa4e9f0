package bpfext

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/sidewall/sidewall/bpfext/objs"
)

// FuzzDecodeEvent feeds arbitrary ring buffer records to the decoder: it
// must never panic, and what it accepts must be an event the datapath could
// have written (known family, enums in range), re-encoding to the same
// fields.
func FuzzDecodeEvent(f *testing.F) {
	seed := func(e objs.SkbEvent) []byte {
		var b bytes.Buffer
		if err := binary.Write(&b, binary.NativeEndian, &e); err != nil {
			f.Fatal(err)
		}
		return b.Bytes()
	}
	f.Add(seed(objs.SkbEvent{Family: 4, Proto: 6, Sport: 40000, Dport: 8080, Verdict: uint8(Deny), Reason: uint8(ReasonDefaultDeny)}))
	f.Add(seed(objs.SkbEvent{Family: 6, Proto: 17, Direction: uint8(Ingress), Verdict: uint8(Audit), Hook: uint8(HookSendmsg)}))
	f.Add(seed(objs.SkbEvent{Family: 4, Proto: 6, Dport: 9090, Verdict: uint8(Deny), Reason: uint8(ReasonPortTaken), Hook: uint8(HookBind)}))
	f.Add(seed(objs.SkbEvent{Family: 0, Verdict: uint8(Deny), Reason: uint8(ReasonTruncated)}))
	f.Add(seed(objs.SkbEvent{Family: 9}))
	f.Add([]byte{})
	f.Add(make([]byte, 3))

	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := DecodeEvent(raw)
		if err != nil {
			return
		}
		// Hook.String names every hook the datapath writes, so an
		// unnamed one is out of range however many hooks there are.
		if e.Direction > Ingress || e.Verdict > Audit || uint32(e.Reason) >= reasonMax || strings.HasPrefix(e.Hook.String(), "hook(") {
			t.Fatalf("accepted an event out of range: %v", e)
		}
		var rec objs.SkbEvent
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &rec); err != nil {
			t.Fatalf("decoder accepted what binary.Read refuses: %v", err)
		}
		switch rec.Family {
		case 4:
			if !e.Src.Is4() || !e.Dst.Is4() || e.Src.As4() != [4]byte(rec.Saddr[:4]) {
				t.Fatalf("IPv4 addresses decoded wrongly: %v", e)
			}
		case 6:
			if !e.Src.Is6() || e.Dst.As16() != rec.Daddr {
				t.Fatalf("IPv6 addresses decoded wrongly: %v", e)
			}
		case 0:
			if e.Src.IsValid() || e.Dst.IsValid() {
				t.Fatalf("addresses invented for a record without a family: %v", e)
			}
		default:
			t.Fatalf("accepted family %d", rec.Family)
		}
		if e.CgroupID != rec.CgroupId || e.SocketCookie != rec.SocketCookie || e.SrcPort != rec.Sport || e.DstPort != rec.Dport {
			t.Fatalf("fields decoded wrongly: %v from %+v", e, rec)
		}
	})
}
