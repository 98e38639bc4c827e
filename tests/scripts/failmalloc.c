/* LD_PRELOAD shim: malloc fails when called from cattn's _kernels module,
   for the call numbered `target` (0-based) or for all calls (target -1).
   Preloaded by tests/scripts/malloc_fault_injection.py, which sets the
   target through failmalloc_set().  Build:
       cc -O1 -shared -fPIC -o failmalloc.so tests/scripts/failmalloc.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
extern void *__libc_malloc(size_t);
static atomic_long seen, failed;
static volatile long target = -3;                 /* -3: off */
void failmalloc_set(long t) { target = t; seen = 0; failed = 0; }
long failmalloc_seen(void) { return seen; }
long failmalloc_failed(void) { return failed; }
void *malloc(size_t n)
{
    if (target != -3) {
        Dl_info info;
        if (dladdr(__builtin_return_address(0), &info) && info.dli_fname
                && strstr(info.dli_fname, "_kernels")) {
            long k = atomic_fetch_add(&seen, 1);
            if (target == -1 || k == target) {
                atomic_fetch_add(&failed, 1);
                return NULL;
            }
        }
    }
    return __libc_malloc(n);
}
