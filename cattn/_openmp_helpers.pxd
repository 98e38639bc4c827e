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
    #endif
    """
    bint CATTN_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_threads() noexcept nogil
