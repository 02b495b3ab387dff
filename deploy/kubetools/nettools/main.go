// Command nettools is the `curl`, `nc` and `dig` of our agnhost image (and
// the `dig` of our glibc-dns-testing image): one static binary that acts by
// the name it is run as (argv[0], as busybox does). The upstream agnhost
// image is Alpine with curl, netcat and bind-tools installed (glibc-dns-testing
// is Debian with dnsutils); the e2e networking and DNS specs exec these in
// their pods through /bin/sh, e.g.
//
//	curl -g -q -s 'http://IP:8083/dial?request=hostname&protocol=http&host=IP&port=8080&tries=1'
//	curl -g -q -s --max-time 15 --connect-timeout 1 http://IP:8083/hostName
//	curl -g -q -s -o /dev/null -w %{http_code} http://IP:PORT/PATH
//	echo hostName | nc -w 1 -u IP 8081
//	dig +notcp +noall +answer +search kubernetes.default.svc.cluster.local A
//	dig +short @IP -p 10053 NAME
//
// and Debian's static busybox has no curl, no dig and an nc without -u.
// This is our own implementation of exactly the options those specs use,
// with the tools' exit codes (curl: 6 resolve, 7 connect, 28 timeout; dig:
// 9 no reply) so that a caller that looks at them sees what it would see
// with the real tools.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	tool := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if tool == "nettools" && len(args) > 0 {
		tool, args = args[0], args[1:]
	}
	switch tool {
	case "curl":
		os.Exit(curl(args, os.Stdout, os.Stderr))
	case "nc":
		os.Exit(nc(args, os.Stdin, os.Stdout, os.Stderr))
	case "dig":
		os.Exit(dig(args, "/etc/resolv.conf", os.Stdout, os.Stderr))
	}
	fmt.Fprintf(os.Stderr, "nettools: run as curl, nc or dig (or: nettools curl|nc|dig ARGS), not %q\n", tool)
	os.Exit(2)
}
