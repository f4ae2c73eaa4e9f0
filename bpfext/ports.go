package bpfext

// portPrefix is an aligned block of ports: the ports whose top plen bits
// equal those of port.
type portPrefix struct {
	port uint16
	plen uint8 // 0 (any port) .. 16 (one port)
}

// portPrefixes splits lo..hi (inclusive) into the fewest aligned blocks, at
// most 30, so the verdict can match a range with one hash probe per prefix
// length in use instead of scanning ranges.
func portPrefixes(lo, hi uint16) []portPrefix {
	if lo == 0 && hi == 0xffff {
		return []portPrefix{{0, 0}}
	}
	var out []portPrefix
	cur := uint32(lo)
	end := uint32(hi)
	for cur <= end {
		// Largest block aligned at cur that fits in cur..end.
		size := uint32(1)
		for size < 1<<16 && cur&(size*2-1) == 0 && cur+size*2-1 <= end {
			size *= 2
		}
		plen := uint8(16)
		for s := size; s > 1; s /= 2 {
			plen--
		}
		out = append(out, portPrefix{port: uint16(cur), plen: plen})
		cur += size
	}
	return out
}
