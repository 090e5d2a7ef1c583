// Command serve serves one file over HTTP on loopback for the fetch benchmark,
// with Range and ETag support (http.ServeContent). It prints its URL and
// serves until killed.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
)

func main() {
	file := flag.String("file", "", "file to serve")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	if *file == "" {
		log.Fatal("serve: -file is required")
	}
	st, err := os.Stat(*file)
	if err != nil {
		log.Fatalf("serve: %v", err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("serve: %v", err)
	}
	fmt.Printf("http://%s/%s\n", ln.Addr(), "image.bin")
	etag := fmt.Sprintf(`"%x-%x"`, st.Size(), st.ModTime().UnixNano())
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(*file)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		w.Header().Set("ETag", etag)
		http.ServeContent(w, r, "", st.ModTime(), f)
	})
	log.Fatal(http.Serve(ln, h))
}
