// An HTTPS server with Go's own TLS (crypto/tls, statically linked): Kite cannot see its
// plaintext and must say so. Usage: https_go PORT CERT KEY
package main

import (
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello from go\n"))
	})
	if err := http.ListenAndServeTLS("127.0.0.1:"+os.Args[1], os.Args[2], os.Args[3], nil); err != nil {
		panic(err)
	}
}
