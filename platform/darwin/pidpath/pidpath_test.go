package pidpath

import "testing"

func TestParse(t *testing.T) {
	buf := make([]byte, 64)
	cases := []struct {
		answer string
		n      int // 0: len(answer)
		want   string
		ok     bool
	}{
		{answer: "/usr/local/bin/agent\x00", want: "/usr/local/bin/agent", ok: true},
		{answer: "/usr/local/bin/agent", want: "/usr/local/bin/agent", ok: true}, // no NUL
		{answer: "/opt//x/../bin/agent\x00junk", want: "/opt/bin/agent", ok: true},
		{answer: "relative/agent\x00"},
		{answer: "\x00/usr/bin/x"}, // empty path before the NUL
		{answer: "/usr/bin/x", n: -1},
		{answer: "/usr/bin/x", n: 65}, // longer than the buffer
	}
	for _, c := range cases {
		n := c.n
		if n == 0 {
			n = len(c.answer)
		}
		copy(buf, make([]byte, len(buf)))
		copy(buf, c.answer)
		got, err := parse(buf, n)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parse(%q, %d) = %q, %v; want %q, ok %v", c.answer, n, got, err, c.want, c.ok)
		}
	}
}
