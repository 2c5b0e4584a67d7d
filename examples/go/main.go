// Asks libpra whether this site may run jobs, from Go through cgo.
//
//	go run . STORE_URL SITE     (exit 0: may run, 1: standby, 2: error — fail closed)
//
// Links the static library (target/debug/libpra.a): build it first with
// `make libpra` (cargo builds libpra_ffi.a; the target copies it to libpra.a), or let
// `make test-go` do it.
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: ${SRCDIR}/../../target/debug/libpra.a -lm -ldl -lpthread
#include <stdlib.h>
#include "pra.h"
*/
import "C"

import (
	"fmt"
	"os"
	"unsafe"
)

func lastError() string { return C.GoString(C.pra_last_error_message()) }

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: pra-go STORE_URL SITE")
		os.Exit(2)
	}
	url := C.CString(os.Args[1])
	defer C.free(unsafe.Pointer(url))
	site := C.CString(os.Args[2])
	defer C.free(unsafe.Pointer(site))

	var store *C.pra_store
	if r := C.pra_store_open(url, &store); r != C.PRA_RESULT_OK {
		fmt.Fprintf(os.Stderr, "pra: %s: %s\n", C.GoString(C.pra_result_name(C.uint32_t(r))), lastError())
		os.Exit(2)
	}
	defer C.pra_store_free(store)

	var v C.pra_verdict
	switch r := C.pra_guard_check(store, site, &v); r {
	case C.PRA_RESULT_OK, C.PRA_RESULT_STANDBY:
		active := C.GoString(&v.active_site[0])
		if active == "" {
			active = "NONE"
		}
		fmt.Printf("libpra %s: site %s may_run=%t token=%d active=%s\n",
			C.GoString(C.pra_version()), os.Args[2], bool(v.may_run), uint64(v.token), active)
		if !bool(v.may_run) {
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "pra: %s: %s (not running: fail closed)\n", C.GoString(C.pra_result_name(C.uint32_t(r))), lastError())
		os.Exit(2)
	}
}
