package bpfext

import "testing"

// The decomposition must cover exactly lo..hi: every port in the range is
// in one block, no port outside is in any block.
func TestPortPrefixes(t *testing.T) {
	cases := [][2]uint16{{0, 0xffff}, {80, 80}, {0, 0}, {1, 0xffff}, {8000, 8100}, {1024, 2047}, {1, 65534}, {65535, 65535}, {30000, 32767}}
	for _, c := range cases {
		ps := portPrefixes(c[0], c[1])
		if len(ps) > 30 {
			t.Errorf("%v: %d prefixes, want at most 30", c, len(ps))
		}
		covered := make([]int, 1<<16)
		for _, p := range ps {
			if p.plen > 16 {
				t.Fatalf("%v: plen %d", c, p.plen)
			}
			size := uint32(1) << (16 - p.plen)
			if uint32(p.port)%size != 0 {
				t.Errorf("%v: block %d/%d not aligned", c, p.port, p.plen)
			}
			for q := uint32(p.port); q < uint32(p.port)+size; q++ {
				covered[q]++
			}
		}
		for q := range covered {
			in := q >= int(c[0]) && q <= int(c[1])
			if in && covered[q] != 1 || !in && covered[q] != 0 {
				t.Fatalf("%v: port %d covered %d times", c, q, covered[q])
			}
		}
	}
}
