// An HTTP/2 cleartext (h2c) server for Kite's tests, on Go's own HTTP/2 stack
// (golang.org/x/net/http2, Debian's golang-golang-x-net-dev): prior knowledge and
// `Upgrade: h2c`. `GET /d/<ms>` answers 200 after <ms> milliseconds, `/s/<code>` answers with
// that status, anything else 200 at once. Usage: h2c_delay <addr:port>. Built offline in
// GOPATH mode by kite-testkit (h2.rs).
package main

import (
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

func main() {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		code := 200
		if strings.HasPrefix(p, "/d/") {
			if ms, err := strconv.Atoi(p[3:]); err == nil {
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
		} else if strings.HasPrefix(p, "/s/") {
			if c, err := strconv.Atoi(p[3:]); err == nil && c >= 200 && c <= 599 {
				code = c
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(code)
		w.Write([]byte("ok\n"))
	})
	srv := &http.Server{Addr: os.Args[1], Handler: h2c.NewHandler(h, &http2.Server{MaxConcurrentStreams: 250})}
	if err := srv.ListenAndServe(); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
