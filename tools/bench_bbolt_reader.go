// A Go reader on etcd's own bbolt for tools/bench-inspect: opens the file
// read-only (mmap, no checksum) and looks at every key and value once.
package main

import (
	"bytes"
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"
)

func main() {
	db, err := bolt.Open(os.Args[1], 0400, &bolt.Options{ReadOnly: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer db.Close()
	var values, enc, bytesSeen int
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				values++
				bytesSeen += len(k) + len(v)
				if bytes.Contains(v, []byte("k8s:enc:")) {
					enc++
				}
				return nil
			})
		})
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("%d values, %d encrypted, %d bytes\n", values, enc, bytesSeen)
}
