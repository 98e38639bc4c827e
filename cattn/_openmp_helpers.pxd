# The one place cattn reaches OpenMP.  Without OpenMP (a build with
# CATTN_ALLOW_NO_OPENMP=1) the stubs below keep every caller serial.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CATTN_HAVE_OPENMP 1
    #else
    #define CATTN_HAVE_OPENMP 0
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_thread_num(void) { return 0; }
    static inline int omp_get_num_threads(void) { return 1; }
    static inline int omp_get_num_procs(void) { return 1; }
    static inline int omp_get_proc_bind(void) { return 0; }
    #include <time.h>
    static inline double omp_get_wtime(void) { return (double)clock() / CLOCKS_PER_SEC; }
    #endif

    /* GNU libgomp's thread pool does not survive fork(): a child that
       enters a parallel region after its parent used one hangs.  A
       pthread_atfork handler marks the child, and cattn then runs on the
       calling thread only (the approach of data.table). */
    #if defined(__unix__) || defined(__APPLE__)
    #include <pthread.h>
    static int cattn_in_forked_child = 0;
    static void cattn_atfork_child(void) { cattn_in_forked_child = 1; }
    static int cattn_register_atfork(void) {
        return pthread_atfork(NULL, NULL, cattn_atfork_child);
    }
    #else
    static int cattn_in_forked_child = 0;
    static int cattn_register_atfork(void) { return 0; }
    #endif

    /* GNU libgomp ends the process ("Thread creation failed") when it cannot
       create a team's threads, e.g. under an address-space limit.  Before a
       team larger than any this module started so far, try creating its
       threads ourselves (same default stack): the team is cut to what could
       be created, so OpenMP never meets the failure.  libgomp keeps one
       thread pool per calling thread (each Python thread that enters a
       region is the master of its own team), so what was verified is kept
       per calling thread: a team verified on the main thread says nothing
       about the threads a second Python thread's first region creates. */
    #if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
    #if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
    #define CATTN_THREAD_LOCAL _Thread_local
    #else
    #define CATTN_THREAD_LOCAL __thread
    #endif
    static CATTN_THREAD_LOCAL int cattn_team_verified = 1;
    static void *cattn_noop_thread(void *arg) { return arg; }
    static int cattn_usable_team(int n) {
        pthread_t th[256];
        int made = 0, i;
        if (n <= cattn_team_verified) return n;
        if (n > 257) n = 257;
        for (i = 0; i < n - 1; i++) {
            if (pthread_create(&th[i], NULL, cattn_noop_thread, NULL) != 0) break;
            made++;
        }
        for (i = 0; i < made; i++) pthread_join(th[i], NULL);
        if (made + 1 == n) cattn_team_verified = n;
        return made + 1;
    }
    #else
    static int cattn_usable_team(int n) { return n; }
    #endif
    """
    bint CATTN_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    int omp_get_num_procs() noexcept nogil
    int omp_get_proc_bind() noexcept nogil
    double omp_get_wtime() noexcept nogil
    int cattn_in_forked_child
    int cattn_register_atfork() noexcept nogil
    int cattn_usable_team(int n) noexcept nogil
