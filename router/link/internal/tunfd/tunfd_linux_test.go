package tunfd

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podrouter/podrouter/router/nstest"
)

var tunKind = Kind{Flag: unix.IFF_TUN, Name: "tun",
	ErrNot: errors.New("not a TUN"), ErrBusy: errors.New("busy"), ErrConfig: errors.New("config")}

func TestCheckMTU(t *testing.T) {
	for _, tc := range []struct {
		mtu int
		ok  bool
	}{{0, true}, {67, false}, {68, true}, {1500, true}, {65535, true}, {65536, false}, {-1, false}} {
		if err := tunKind.CheckMTU(tc.mtu); (err == nil) != tc.ok || (err != nil && !errors.Is(err, tunKind.ErrConfig)) {
			t.Errorf("CheckMTU(%d) = %v, want ok %v", tc.mtu, err, tc.ok)
		}
	}
}

// fakeSetup records what Create and FromFile hand to Open; Open closes fd
// and fails with openErr when it is set, else it returns fd.
type fakeSetup struct {
	checkErr, openErr error
	opened            bool
	name              string
}

func (s *fakeSetup) Check() error { return s.checkErr }

func (s *fakeSetup) Open(fd int, name string, _ uint16) (int, error) {
	s.opened, s.name = true, name
	if s.openErr != nil {
		_ = unix.Close(fd)
		return -1, s.openErr
	}
	return fd, nil
}

func openFDs(t *testing.T) int {
	t.Helper()
	// Only TUN/TAP descriptors: what Create and FromFile open. Counting
	// every descriptor raced with the runtime and the test framework,
	// which open their own (an epoll instance, a netns handle) at times
	// of their choosing.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if dst, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && dst == CloneDevice {
			n++
		}
	}
	return n
}

// TestOwnership has Create and FromFile refuse and fail in each way: no
// descriptor of theirs stays open, a refused file stays open, an accepted
// one is closed, and Open runs only after Check and the kind check passed.
func TestOwnership(t *testing.T) {
	ns := nstest.New(t)
	var tun, tap *os.File
	if err := ns.Do(func() error {
		for _, x := range []struct {
			f     **os.File
			name  string
			flags uint16
		}{{&tun, "tft", unix.IFF_TUN | unix.IFF_NO_PI}, {&tap, "tfp", unix.IFF_TAP | unix.IFF_NO_PI}} {
			fd, err := unix.Open(CloneDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			ifr, _ := unix.NewIfreq(x.name)
			ifr.SetUint16(x.flags)
			if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
				_ = unix.Close(fd)
				return err
			}
			*x.f = os.NewFile(uintptr(fd), x.name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	defer tap.Close()
	openErr := errors.New("open failed")
	for _, tc := range []struct {
		name     string
		f        *os.File
		s        fakeSetup
		want     error
		wantOpen bool
	}{
		{"check", tun, fakeSetup{checkErr: tunKind.ErrConfig}, tunKind.ErrConfig, false},
		{"other-kind", tap, fakeSetup{}, tunKind.ErrNot, false},
		{"open-fails", tun, fakeSetup{openErr: openErr}, openErr, true},
	} {
		before := openFDs(t)
		if _, err := FromFile(tunKind, tc.f, &tc.s); !errors.Is(err, tc.want) || tc.s.opened != tc.wantOpen {
			t.Errorf("%s: FromFile = %v, Open called %v; want %v, %v", tc.name, err, tc.s.opened, tc.want, tc.wantOpen)
		}
		if _, err := tc.f.Stat(); err != nil {
			t.Errorf("%s: FromFile closed the file it refused: %v", tc.name, err)
		}
		if n := openFDs(t); n != before {
			t.Errorf("%s: %d descriptors open after FromFile, %d before", tc.name, n, before)
		}
	}
	if err := ns.Do(func() error {
		for _, tc := range []struct {
			name, dev string
			want      error
		}{{"busy", "tft", tunKind.ErrBusy}, {"other-kind", "tfp", tunKind.ErrNot}, {"bad-name", "a-name-longer-than-ifnamsiz", tunKind.ErrConfig}} {
			before := openFDs(t)
			s := fakeSetup{}
			if _, err := Create(tunKind, tc.dev, unix.IFF_TUN|unix.IFF_NO_PI, &s); !errors.Is(err, tc.want) || s.opened {
				t.Errorf("Create %s: %v, Open called %v; want %v", tc.name, err, s.opened, tc.want)
			}
			if n := openFDs(t); n != before {
				t.Errorf("Create %s: %d descriptors open, %d before", tc.name, n, before)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	s := fakeSetup{}
	fd, err := FromFile(tunKind, tun, &s)
	if err != nil || s.name != "tft" {
		t.Fatalf("FromFile = %d, %v, name %q; want tft", fd, err, s.name)
	}
	defer unix.Close(fd)
	if _, err := tun.Stat(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("FromFile left its file open: %v", err)
	}
}
