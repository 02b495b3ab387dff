package daemon

// The pods table: every attachment the daemon knows, its engine port and its
// record on disk.
//
//	attach:   TAP fd (SCM_RIGHTS) ─► tap.FromFile ─► engine.AddPort ─► record written
//	detach:   engine.RemovePort (closes our fd; the TAP stays) ─► record removed
//	restart:  record ─► enter its netns ─► the TAP still there? ─► tap.Create(name, Persist)
//	          re-opens it ─► engine.AddPort
//
// Design notes. A pod's TAP is persistent, so it outlives the daemon's fd:
// while the daemon is down the pod keeps its eth0, its addresses and its
// routes, and the kernel drops what the pod sends (no queue attached); TCP
// retransmits, and the flows carry on once the daemon has re-opened the TAP.
// Re-opening is by name inside the pod's namespace; the device is looked up
// first, so a TAP that CNI DEL removed while the daemon was down is never
// created again.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/podrouter/podrouter/router/api"
	"github.com/podrouter/podrouter/router/engine"
	"github.com/podrouter/podrouter/router/link"
	"github.com/podrouter/podrouter/router/link/tap"
	"github.com/podrouter/podrouter/router/packet"
)

// errGone means a recorded attachment's netns or TAP no longer exists.
var errGone = errors.New("daemon: pod netns or TAP gone")

// pod is one attachment.
type pod struct {
	rec  record
	port *engine.Port // nil while not attached (re-attach failed)
}

// pods is the attachment table. mu serialises attach, detach, re-attach
// and the store.
type pods struct {
	mu    sync.Mutex
	eng   *engine.Engine
	store *store
	log   *zap.Logger
	byID  map[api.AttachmentID]*pod
	hp    hostPorts // the pods' hostPorts, published (ingress.go)
}

// tapConfig is how the daemon opens a pod's TAP: persistent (it outlives
// the daemon), offloads negotiated.
func tapConfig(mtu int) tap.Config { return tap.Config{MTU: mtu, Persist: true} }

// checkAddrs checks that addrs are pod addresses of the engine's podCIDRs.
func (d handler) checkAddrs(addrs []netip.Addr) error {
	seen4, seen6 := false, false
	for _, a := range addrs {
		in := false
		for _, p := range d.cfg.PodCIDRs() {
			if p.Contains(a) {
				in = true
				if a == p.Addr() || a == p.Addr().Next() {
					return fmt.Errorf("%w: address %s is the network or gateway address of %s", api.ErrBadRequest, a, p)
				}
			}
		}
		if !in {
			return fmt.Errorf("%w: address %s is not in the node's podCIDRs %v", api.ErrBadRequest, a, d.cfg.PodCIDRs())
		}
		if a.Is4() && seen4 || a.Is6() && seen6 {
			return fmt.Errorf("%w: more than one address of %s's family", api.ErrBadRequest, a)
		}
		seen4, seen6 = seen4 || a.Is4(), seen6 || a.Is6()
	}
	return nil
}

// Attach implements api.Handler.
func (d handler) Attach(ctx context.Context, req api.AttachRequest, f *os.File) (api.Attachment, error) {
	if !d.attachable() {
		_ = f.Close()
		if d.ready.closing.Load() {
			return api.Attachment{}, fmt.Errorf("%w: shutting down", api.ErrNotReady)
		}
		return api.Attachment{}, fmt.Errorf("%w: re-attaching recorded pods", api.ErrNotReady)
	}
	if err := d.checkAddrs(req.Addrs); err != nil {
		_ = f.Close()
		return api.Attachment{}, err
	}
	dev, err := tap.FromFile(f, tapConfig(req.MTU))
	if err != nil {
		_ = f.Close() // FromFile leaves it open on failure
		return api.Attachment{}, fmt.Errorf("%w: TAP from the passed fd: %w", api.ErrBadRequest, err)
	}
	pd, err := d.pods.attach(req, dev)
	if err != nil {
		return api.Attachment{}, err
	}
	d.log.Info("pod attached", zap.Stringer("pod", req.AttachmentID), zap.String("netns", req.Netns),
		zap.Stringers("addrs", req.Addrs), zap.Int32("port", pd.port.Index()))
	return pd.attachment(), nil
}

// attach records req and attaches dev for it. A repeated ADD (the runtime
// lost our reply, or the pod's TAP was re-created) replaces the attachment
// of the same ID only once the new one works: the engine swaps the ports in
// one step, and a failure leaves the old attachment, record and port as
// they were. On error dev is closed.
func (p *pods) attach(req api.AttachRequest, dev link.Device) (*pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.byID[req.AttachmentID]
	rec := record{AttachRequest: req, Created: time.Now().UnixNano()}
	pd := &pod{rec: rec}
	if err := p.store.put(rec); err != nil {
		_ = dev.Close()
		return nil, fmt.Errorf("%w: %w", api.ErrInternal, err)
	}
	var replace *engine.Port
	if old != nil {
		replace = old.port
	}
	if err := p.attachLocked(pd, dev, replace); err != nil {
		var rerr error
		if old != nil {
			rerr = p.store.put(old.rec)
		} else {
			rerr = p.store.remove(rec.AttachmentID)
		}
		if rerr != nil {
			p.log.Error("restore attachment record", zap.Stringer("pod", rec.AttachmentID), zap.Error(rerr))
		}
		return nil, err
	}
	if old != nil {
		old.port = nil
	}
	p.byID[req.AttachmentID] = pd
	p.syncHostPortsLocked()
	return pd, nil
}

// attachLocked adds dev to the engine for pd, in place of replace when it
// is not nil; on error dev is closed (and replace stays attached).
func (p *pods) attachLocked(pd *pod, dev link.Device, replace *engine.Port) error {
	pc := engine.PortConfig{
		Name:    pd.rec.String(),
		Kind:    engine.KindPod,
		L2:      true,
		PeerMAC: packet.MAC(pd.rec.MAC),
		MTU:     pd.rec.MTU,
		Addrs:   pd.rec.Addrs,
	}
	var port *engine.Port
	var err error
	if replace != nil {
		port, err = p.eng.ReplacePort(replace, dev, pc)
	} else {
		port, err = p.eng.AddPort(dev, pc)
	}
	if err != nil {
		_ = dev.Close()
		if errors.Is(err, engine.ErrAddrInUse) {
			return fmt.Errorf("%w: %w", api.ErrConflict, err)
		}
		return fmt.Errorf("%w: %w", api.ErrInternal, err)
	}
	pd.port = port
	return nil
}

// detachLocked removes pd's port (closing the daemon's fd; the persistent
// TAP stays) and forgets pd, on disk too.
func (p *pods) detachLocked(pd *pod) {
	if pd.port != nil {
		if err := p.eng.RemovePort(pd.port); err != nil {
			p.log.Warn("remove port", zap.Stringer("pod", pd.rec.AttachmentID), zap.Error(err))
		}
		pd.port = nil
	}
	if err := p.store.remove(pd.rec.AttachmentID); err != nil {
		p.log.Error("remove attachment record", zap.Stringer("pod", pd.rec.AttachmentID), zap.Error(err))
	}
	delete(p.byID, pd.rec.AttachmentID)
	p.syncHostPortsLocked()
}

// Detach implements api.Handler. It works whether or not the daemon is
// ready.
func (d handler) Detach(_ context.Context, id api.AttachmentID) error {
	p := &d.pods
	p.mu.Lock()
	defer p.mu.Unlock()
	pd, ok := p.byID[id]
	if !ok {
		return fmt.Errorf("%w: attachment %s", api.ErrNotFound, id)
	}
	addrs := pd.rec.Addrs
	p.detachLocked(pd)
	// The pod is gone: its flows to the outside end now (RST to the
	// remotes), not at their idle timeouts.
	if eg := d.node.Egress(); eg != nil {
		n := 0
		for _, a := range addrs {
			n += eg.ResetSource(a)
		}
		if n > 0 {
			d.log.Info("egress flows of a detached pod reset", zap.Stringer("pod", id), zap.Int("flows", n))
		}
	}
	d.log.Info("pod detached", zap.Stringer("pod", id))
	return nil
}

// reattach re-opens every recorded attachment's TAP. Records whose netns
// or TAP is gone are dropped; other failures keep the record (CNI DEL or
// GC removes it) and count as failed.
func (p *pods) reattach(recs []record) (ok, failed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rec := range recs {
		pd := &pod{rec: rec}
		dev, err := reopenTAP(rec)
		if err == nil {
			err = p.attachLocked(pd, dev, nil)
		}
		switch {
		case err == nil:
			ok++
		case errors.Is(err, errGone):
			p.log.Info("pod gone while the daemon was down; record dropped", zap.Stringer("pod", rec.AttachmentID), zap.Error(err))
			if err := p.store.remove(rec.AttachmentID); err != nil {
				p.log.Error("remove attachment record", zap.Stringer("pod", rec.AttachmentID), zap.Error(err))
			}
			continue
		default:
			failed++
			p.log.Error("re-attach failed; the pod has no network until CNI DEL/ADD", zap.Stringer("pod", rec.AttachmentID), zap.Error(err))
		}
		p.byID[rec.AttachmentID] = pd
	}
	p.syncHostPortsLocked()
	return ok, failed
}

// reopenTAP enters rec's netns (on a locked OS thread, see ns.Do) and
// re-opens its persistent TAP by name.
func reopenTAP(rec record) (*tap.Device, error) {
	if _, err := os.Stat(rec.Netns); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: netns %s: %w", errGone, rec.Netns, err)
	}
	var dev *tap.Device
	err := ns.WithNetNSPath(rec.Netns, func(ns.NetNS) error {
		l, err := netlink.LinkByName(rec.IfName)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return fmt.Errorf("%w: %s in %s", errGone, rec.IfName, rec.Netns)
			}
			return err
		}
		if tt, ok := l.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
			return fmt.Errorf("%w: %s in %s is a %s, not a TAP", errGone, rec.IfName, rec.Netns, l.Type())
		}
		dev, err = tap.Create(rec.IfName, tapConfig(rec.MTU))
		return err
	})
	if err != nil {
		var notNS ns.NSPathNotNSErr
		var noNS ns.NSPathNotExistErr
		if errors.As(err, &notNS) || errors.As(err, &noNS) {
			return nil, fmt.Errorf("%w: %w", errGone, err)
		}
		return nil, fmt.Errorf("re-open TAP %s in %s: %w", rec.IfName, rec.Netns, err)
	}
	return dev, nil
}

// closeAll detaches every port without touching the records (shutdown:
// the pods keep their TAPs and the next daemon re-attaches them).
func (p *pods) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pd := range p.byID {
		if pd.port != nil {
			_ = p.eng.RemovePort(pd.port)
			pd.port = nil
		}
	}
}

func (pd *pod) attachment() api.Attachment {
	a := api.Attachment{AttachRequest: pd.rec.AttachRequest, Port: pd.rec.String(), PortIndex: -1, Created: time.Unix(0, pd.rec.Created).UTC()}
	if pd.port != nil {
		a.PortIndex = pd.port.Index()
	}
	return a
}

// Attachments implements api.Handler.
func (d handler) Attachments(context.Context) ([]api.Attachment, error) {
	p := &d.pods
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]api.Attachment, 0, len(p.byID))
	for _, pd := range p.byID {
		out = append(out, pd.attachment())
	}
	slices.SortFunc(out, func(a, b api.Attachment) int {
		if a.ContainerID != b.ContainerID {
			return cmpString(a.ContainerID, b.ContainerID)
		}
		return cmpString(a.IfName, b.IfName)
	})
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
