package pktq

import (
	"errors"
	"testing"

	"github.com/podrouter/podrouter/router/link"
)

func TestQueue(t *testing.T) {
	q := New(2, 4)
	w, err := q.Write([][]byte{{0, 1}, {0, 2, 2}, {0, 3}, {0, 1, 2, 3, 4, 5}}, 1)
	if err != nil || w.Packets != 2 || w.Bytes != 3 || w.Full != 1 || w.TooBig != 1 {
		t.Fatalf("Write = %+v, %v", w, err)
	}
	bufs, sizes := [][]byte{make([]byte, 8), make([]byte, 2)}, make([]int, 2)
	// The second packet (2 bytes) does not fit the second buffer at offset 1: dropped.
	if n, err := q.Read(bufs, sizes, 1); n != 1 || err != nil || sizes[0] != 1 || bufs[0][1] != 1 {
		t.Fatalf("Read = %d, %v, sizes %v", n, err, sizes)
	}
	if d := q.Dropped(); d != 3 {
		t.Fatalf("Dropped = %d, want 3 (full, too big, too big for the reader)", d)
	}
	// Close: what is queued is still read, then ErrClosed.
	if _, err := q.Write([][]byte{{9}}, 0); err != nil {
		t.Fatal(err)
	}
	q.Close()
	if _, err := q.Write([][]byte{{9}}, 0); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if n, err := q.Read(bufs, sizes, 0); n != 1 || err != nil || bufs[0][0] != 9 {
		t.Fatalf("Read after Close = %d, %v", n, err)
	}
	if _, err := q.Read(bufs, sizes, 0); !errors.Is(err, link.ErrClosed) {
		t.Fatalf("drained Read after Close: %v", err)
	}
}

func TestQueueNoAlloc(t *testing.T) {
	q := New(4, 1500)
	in, out, sizes := [][]byte{make([]byte, 1400)}, [][]byte{make([]byte, 1500)}, make([]int, 1)
	if a := testing.AllocsPerRun(100, func() {
		_, _ = q.Write(in, 0)
		_, _ = q.Read(out, sizes, 0)
	}); a != 0 {
		t.Fatalf("%v allocations per packet", a)
	}
}
