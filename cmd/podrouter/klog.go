package main

// client-go logs through klog (reflector and watch errors, leader
// election, throttling notices). Left alone, klog writes its own text
// lines to stderr, so `--log-format json` would not cover them; routed
// here, every line the daemon prints is one of its zap logger's.

import (
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"k8s.io/klog/v2"
)

// routeKlog sends klog's output, and the contextual logger client-go gets
// from klog.FromContext, to log named "client-go"; klog's V(n) is zap level
// -n, so V(1) shows at --log-level debug. The returned function restores
// klog's own output (klog's logger is process-wide: the command's tests
// run several commands in one process).
func routeKlog(log *zap.Logger) (restore func()) {
	l := log.Named("client-go")
	klog.SetLoggerWithOptions(zapr.NewLogger(l), klog.ContextualLogger(true), klog.FlushLogger(func() { _ = l.Sync() }))
	return func() {
		klog.Flush()
		klog.ClearLogger()
	}
}
