package api

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// FuzzDecodeRequest feeds decodeRequest (what the server makes of a
// request line from a client, any client the socket admits) arbitrary
// bytes. Seeds: testdata/fuzz/FuzzDecodeRequest. Invariants:
//   - it never panics, and neither do the ops' own checks of what it
//     decoded (Validate, Normalize);
//   - what it accepts is exactly one JSON value of this protocol version;
//   - what it accepts re-encodes (as the client encodes) into a line it
//     accepts again as the same request, which the ops' checks judge the
//     same way.
func FuzzDecodeRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := decodeRequest(line)
		if err != nil {
			checkOps(req) // a partial request must not upset them either
			return
		}
		if !json.Valid(line) {
			t.Fatalf("accepted a line that is not one JSON value: %q", line)
		}
		if req.V != Version {
			t.Fatalf("accepted protocol version %d", req.V)
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", req, err)
		}
		again, err := decodeRequest(b)
		if err != nil {
			t.Fatalf("decode of the re-encoded request %s: %v (from %q)", b, err, line)
		}
		if !reflect.DeepEqual(req, again) {
			t.Fatalf("request changed through a re-encoding:\n%q\n-> %+v\n-> %s\n-> %+v", line, req, b, again)
		}
		v1, v2 := checkOps(req), checkOps(again)
		if v1 != nil && !errors.Is(v1, ErrBadRequest) || (v1 == nil) != (v2 == nil) {
			t.Fatalf("checks of %q: %v, of its re-encoding: %v (want the same verdict, an ErrBadRequest or nil)", line, v1, v2)
		}
	})
}

// checkOps runs the checks dispatch runs on each op's payload (on copies:
// Normalize fills in defaults) and returns the first error.
func checkOps(req request) error {
	var errs []error
	if req.Attach != nil {
		a := *req.Attach
		errs = append(errs, a.Validate())
	}
	if req.ID != nil {
		errs = append(errs, req.ID.Validate())
	}
	if req.Capture != nil {
		c := *req.Capture
		errs = append(errs, c.Normalize())
	}
	if req.Conntrack != nil {
		c := *req.Conntrack
		errs = append(errs, c.Normalize())
	}
	if req.Services != nil {
		s := *req.Services
		errs = append(errs, s.Normalize())
	}
	if req.Policy != nil {
		p := *req.Policy
		errs = append(errs, p.Normalize())
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// TestDecodeRequest pins what decodeRequest accepts and refuses, by name.
func TestDecodeRequest(t *testing.T) {
	for _, c := range []struct {
		name, line string
		ok         bool
		op         Op
	}{
		{"status", `{"v":1,"op":"status"}`, true, OpStatus},
		{"white-space-around", " \t{\"v\":1,\"op\":\"routes\"} \r", true, OpRoutes},
		{"detach", `{"v":1,"op":"detach","id":{"containerID":"abc","ifName":"eth0"}}`, true, OpDetach},
		{"unknown-op-decodes", `{"v":1,"op":"reboot"}`, true, "reboot"}, // dispatch refuses it
		{"wrong-version", `{"v":2,"op":"status"}`, false, OpStatus},
		{"no-version", `{"op":"status"}`, false, OpStatus},
		{"unknown-field", `{"v":1,"op":"status","sudo":true}`, false, OpStatus},
		{"trailing-garbage", `{"v":1,"op":"status"} x`, false, OpStatus},
		{"second-object", `{"v":1,"op":"status"}{"v":1,"op":"detach"}`, false, OpStatus},
		{"not-an-object", `[1]`, false, ""},
		{"empty", ``, false, ""},
		{"bad-mac", `{"v":1,"op":"attach","attach":{"containerID":"a","ifName":"eth0","mac":"zz"}}`, false, OpAttach},
		{"bad-addr", `{"v":1,"op":"attach","attach":{"containerID":"a","ifName":"eth0","addrs":["10.0.0.300"]}}`, false, OpAttach},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, err := decodeRequest([]byte(c.line))
			if (err == nil) != c.ok || req.Op != c.op {
				t.Errorf("decodeRequest(%q) = op %q, %v; want op %q, ok %v", c.line, req.Op, err, c.op, c.ok)
			}
		})
	}
}
