package tempns

import (
	"errors"
	"strings"
	"testing"
)

func TestOwner(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		pid      int
		ok       bool
	}{
		{"tagged", "podr-123-xn-4", 123, true},
		{"untagged", "podr-77-1", 77, true},
		{"pid only", "podr-9", 9, true},
		{"another prefix", "prt-123-4", 0, false},
		{"no pid", "podr-lab-1", 0, false},
		{"pid zero", "podr-0-1", 0, false},
		{"negative", "podr--5-1", 0, false},
		{"prefix alone", "podr-", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid, ok := owner(tc.in)
			if pid != tc.pid || ok != tc.ok {
				t.Errorf("owner(%q) = %d, %v; want %d, %v", tc.in, pid, ok, tc.pid, tc.ok)
			}
		})
	}
}

// TestBadTag: a tag that is not a plain name is refused before anything is
// created (no privileges needed).
func TestBadTag(t *testing.T) {
	for _, tag := range []string{"a/b", "a:b", "sp ace", "ü", strings.Repeat("x", 65)} {
		t.Run(tag, func(t *testing.T) {
			ns, err := New(tag, func(*NS) error {
				t.Error("setup ran")
				return nil
			})
			if ns != nil {
				_ = ns.Delete()
			}
			if !errors.Is(err, ErrBadTag) || ns != nil {
				t.Errorf("New(%q) = %v, %v; want ErrBadTag", tag, ns, err)
			}
		})
	}
	for _, tag := range []string{"", "xn", "eg-node", "n0-pod-1", "a.b_c", strings.Repeat("x", 64)} {
		if !validTag(tag) {
			t.Errorf("validTag(%q) = false", tag)
		}
	}
}
