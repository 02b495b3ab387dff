package uring

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func ringOrSkip(t *testing.T) *Ring {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("io_uring not usable here (the devices write frame by frame): %v", err)
	}
	r := Get()
	if r == nil {
		t.Fatal("Get returned nil although io_uring is available")
	}
	t.Cleanup(func() { Put(r) })
	return r
}

func pipe(t *testing.T) (r *os.File, w int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	// Large enough for every batch below, so no write waits for a reader.
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, 1<<20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[1]) })
	f := os.NewFile(uintptr(p[0]), "pipe")
	t.Cleanup(func() { f.Close() })
	return f, p[1]
}

// TestWriteBatchOrder writes full and short batches to a pipe: every frame
// arrives once, whole, in order, and each result is its length.
func TestWriteBatchOrder(t *testing.T) {
	r := ringOrSkip(t)
	rd, wr := pipe(t)
	var want bytes.Buffer
	for _, n := range []int{1, 3, Entries, 2} {
		frames := make([][]byte, n)
		for i := range frames {
			frames[i] = fmt.Appendf(nil, "frame %d of %d;", i, n)
			want.Write(frames[i])
		}
		res, err := r.WriteBatch(wr, frames)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != n {
			t.Fatalf("%d results for %d frames", len(res), n)
		}
		for i, v := range res {
			if int(v) != len(frames[i]) {
				t.Fatalf("batch of %d: frame %d result %d, want %d", n, i, v, len(frames[i]))
			}
		}
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(rd, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("pipe carried %q\nwant %q", got, want.Bytes())
	}
}

// TestWriteBatchErrors: a frame to a closed descriptor gets -EBADF while
// the ring stays usable; more than Entries frames is refused.
func TestWriteBatchErrors(t *testing.T) {
	r := ringOrSkip(t)
	rd, wr := pipe(t)
	var p [2]int
	if err := unix.Pipe2(p[:], 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(p[0])
	unix.Close(p[1])
	res, err := r.WriteBatch(p[1], [][]byte{[]byte("a"), []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range res {
		if unix.Errno(-v) != unix.EBADF {
			t.Fatalf("frame %d to a closed descriptor: result %d, want -EBADF", i, v)
		}
	}
	if _, err := r.WriteBatch(wr, make([][]byte, Entries+1)); err == nil {
		t.Fatal("a batch of Entries+1 frames was accepted")
	}
	if res, err := r.WriteBatch(wr, [][]byte{[]byte("ok")}); err != nil || res[0] != 2 {
		t.Fatalf("after the errors: %v, %v", res, err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(rd, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

// TestReadvBatch: reads on a non-blocking pipe fill the iovecs in order
// and complete at once with -EAGAIN when there is nothing (they never wait
// for data).
func TestReadvBatch(t *testing.T) {
	r, err := New()
	if err != nil {
		t.Skipf("io_uring not usable here: %v", err)
	}
	defer r.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	hdr := make([]byte, 3)
	bufs := [][]byte{make([]byte, 8), make([]byte, 8), make([]byte, 8)}
	iovs := make([][]unix.Iovec, len(bufs))
	for i := range iovs {
		iovs[i] = make([]unix.Iovec, 2)
		iovs[i][0].Base, iovs[i][1].Base = &hdr[0], &bufs[i][0]
		iovs[i][0].SetLen(len(hdr))
		iovs[i][1].SetLen(len(bufs[i]))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, err := r.ReadvBatch(p[0], iovs)
		if err != nil {
			t.Error(err)
			return
		}
		for i, v := range res {
			if unix.Errno(-v) != unix.EAGAIN {
				t.Errorf("read %d of an empty pipe: %d, want -EAGAIN", i, v)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ReadvBatch on an empty non-blocking pipe is still waiting after 5 s")
	}
	if _, err := unix.Write(p[1], []byte("abcdefghijklmnopq")); err != nil {
		t.Fatal(err)
	}
	res, err := r.ReadvBatch(p[0], iovs)
	if err != nil {
		t.Fatal(err)
	}
	// A pipe is a stream: the first readv takes 3+8 bytes, the second the
	// remaining 6, the third finds nothing.
	if res[0] != 11 || res[1] != 6 || unix.Errno(-res[2]) != unix.EAGAIN {
		t.Fatalf("results %v, want [11 6 -EAGAIN]", res)
	}
	if string(bufs[0]) != "defghijk" || string(bufs[1][:3]) != "opq" || string(hdr) != "lmn" {
		t.Fatalf("read %q %q %q", hdr, bufs[0], bufs[1])
	}
}

// TestPool: concurrent writers each get their own ring; the pool reuses
// rings, Release closes the idle ones, and SetFallback turns rings off.
func TestPool(t *testing.T) {
	ringOrSkip(t)
	rd, wr := pipe(t)
	const writers, rounds = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			frames := [][]byte{{byte('a' + w)}, {byte('a' + w)}}
			for range rounds {
				r := Get()
				if r == nil {
					t.Error("Get returned nil")
					return
				}
				res, err := r.WriteBatch(wr, frames)
				ok := err == nil && res[0] == 1 && res[1] == 1 // res is the ring's: read before Put
				Put(r)
				if !ok {
					t.Errorf("writer %d: %v, %v", w, res, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return // fewer bytes in the pipe: reading them all would block
	}
	got := make([]byte, writers*rounds*2)
	if _, err := io.ReadFull(rd, got); err != nil {
		t.Fatal(err)
	}
	for w := range writers {
		if n := bytes.Count(got, []byte{byte('a' + w)}); n != rounds*2 {
			t.Fatalf("writer %d: %d bytes arrived, want %d", w, n, rounds*2)
		}
	}
	poolMu.Lock()
	idle := len(pool)
	poolMu.Unlock()
	if idle == 0 || idle > writers+1 {
		t.Fatalf("%d idle rings after %d writers", idle, writers)
	}
	Release()
	if poolMu.Lock(); len(pool) != 0 {
		t.Fatalf("%d rings idle after Release", len(pool))
	}
	poolMu.Unlock()

	prev := SetFallback(true)
	if Get() != nil {
		t.Fatal("Get returned a ring with the fallback on")
	}
	SetFallback(prev)
	if r := Get(); r == nil {
		t.Fatal("Get returned nil with the fallback off")
	} else {
		Put(r)
	}
}

// TestWriteBatchAllocs: a batch allocates nothing.
func TestWriteBatchAllocs(t *testing.T) {
	r := ringOrSkip(t)
	rd, wr := pipe(t)
	frames := [][]byte{make([]byte, 100), make([]byte, 100), make([]byte, 100)}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := r.WriteBatch(wr, frames); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch", allocs)
	}
	// Drain what the runs wrote (101 batches).
	if _, err := io.ReadFull(rd, make([]byte, 101*300)); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkWrite compares a batch of 64-byte frames written through a ring
// with the same frames written by one write(2) each, to a pipe.
func BenchmarkWrite(b *testing.B) {
	if err := Available(); err != nil {
		b.Skip(err)
	}
	for _, batch := range []int{8, 64} {
		frames := make([][]byte, batch)
		for i := range frames {
			frames[i] = make([]byte, 64)
		}
		run := func(b *testing.B, write func(wr int)) {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				b.Fatal(err)
			}
			defer unix.Close(p[0])
			defer unix.Close(p[1])
			if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, 1<<20); err != nil {
				b.Fatal(err)
			}
			sink := make([]byte, 64*batch)
			b.SetBytes(int64(64 * batch))
			b.ResetTimer()
			for b.Loop() {
				write(p[1])
				if _, err := unix.Read(p[0], sink); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "frames/s")
		}
		b.Run(fmt.Sprintf("ring/batch=%d", batch), func(b *testing.B) {
			r := Get()
			defer Put(r)
			run(b, func(wr int) {
				if _, err := r.WriteBatch(wr, frames); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(fmt.Sprintf("write/batch=%d", batch), func(b *testing.B) {
			run(b, func(wr int) {
				for _, f := range frames {
					if _, err := unix.Write(wr, f); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
