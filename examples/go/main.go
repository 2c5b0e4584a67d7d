// Asks libpra whether this site may run jobs, from Go through cgo.
//
//	pra-go STORE_URL SITE        exit 0: may run, 1: standby, 2: error — fail closed
//	pra-go --goroutines N CALLS  N goroutines × CALLS failing calls: every message must be its
//	                             own call's (exit 1 otherwise)
//
// Builds against the installed library through pkg-config (`make install`, then
// PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig go build); `make test-go` installs into a scratch prefix
// and runs both modes.
//
// Errors are read from a pra_error owned by the call (the `_e` functions), not from
// pra_last_error_message(): that one is per OS thread, and between two cgo calls the Go runtime
// may move the goroutine to another thread, whose last error belongs to another goroutine.
package main

/*
#cgo pkg-config: pra
#include <stdlib.h>
#include "pra.h"
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// praError is a failed call's result name and message.
type praError struct {
	name, message string
}

func (e *praError) Error() string { return e.name + ": " + e.message }

// call runs f with a fresh pra_error and returns its result and, on failure, the error.
func call(f func(err *C.pra_error) C.pra_result) (C.pra_result, *praError) {
	cerr := C.pra_error_new()
	defer C.pra_error_free(cerr)
	r := f(cerr)
	if r == C.PRA_RESULT_OK || r == C.PRA_RESULT_STANDBY {
		return r, nil
	}
	return r, &praError{C.GoString(C.pra_result_name(C.uint32_t(r))), C.GoString(C.pra_error_message(cerr))}
}

func openStore(url string) (*C.pra_store, *praError) {
	curl := C.CString(url)
	defer C.free(unsafe.Pointer(curl))
	var store *C.pra_store
	_, err := call(func(e *C.pra_error) C.pra_result { return C.pra_store_open_e(curl, &store, e) })
	return store, err
}

func check(url, site string) int {
	store, err := openStore(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pra: %v\n", err)
		return 2
	}
	defer C.pra_store_free(store)
	csite := C.CString(site)
	defer C.free(unsafe.Pointer(csite))
	var v C.pra_verdict
	if _, err := call(func(e *C.pra_error) C.pra_result { return C.pra_guard_check_e(store, csite, &v, e) }); err != nil {
		fmt.Fprintf(os.Stderr, "pra: %v (not running: fail closed)\n", err)
		return 2
	}
	active := C.GoString(&v.active_site[0])
	if active == "" {
		active = "NONE"
	}
	fmt.Printf("libpra %s: site %s may_run=%t token=%d active=%s\n",
		C.GoString(C.pra_version()), site, bool(v.may_run), uint64(v.token), active)
	if !bool(v.may_run) {
		return 1
	}
	return 0
}

// goroutines makes n goroutines fail calls × times each with a URL naming the call, and counts
// the messages that do not name their own call, read both ways: from the call's pra_error, and
// (for comparison, not for use) from the thread-local message in a second cgo call.
func goroutines(n, calls int) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	wrongOwn, wrongThreadLocal := 0, 0
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < calls; i++ {
				marker := fmt.Sprintf("redis://g%d-c%d", g, i)
				_, err := openStore(marker)
				curl := C.CString(marker)
				var s *C.pra_store
				C.pra_store_open(curl, &s)
				C.free(unsafe.Pointer(curl))
				runtime.Gosched()
				threadLocal := C.GoString(C.pra_last_error_message())
				mu.Lock()
				quoted := "\"" + marker + "\"" // as the message quotes the URL
				if err == nil || !strings.Contains(err.message, quoted) {
					wrongOwn++
				}
				if !strings.Contains(threadLocal, quoted) {
					wrongThreadLocal++
				}
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	fmt.Printf("goroutines: %d calls; messages not their own call's: pra_error %d, thread-local %d\n",
		n*calls, wrongOwn, wrongThreadLocal)
	if wrongOwn != 0 {
		return 1
	}
	return 0
}

func main() {
	switch {
	case len(os.Args) == 4 && os.Args[1] == "--goroutines":
		n, err1 := strconv.Atoi(os.Args[2])
		calls, err2 := strconv.Atoi(os.Args[3])
		if err1 != nil || err2 != nil || n < 1 || calls < 1 {
			fmt.Fprintln(os.Stderr, "usage: pra-go --goroutines N CALLS")
			os.Exit(2)
		}
		os.Exit(goroutines(n, calls))
	case len(os.Args) == 3:
		os.Exit(check(os.Args[1], os.Args[2]))
	default:
		fmt.Fprintln(os.Stderr, "usage: pra-go STORE_URL SITE | pra-go --goroutines N CALLS")
		os.Exit(2)
	}
}
