# fastpath.includes.atomics: C11-style atomics (GCC/Clang __atomic builtins) for state
# that other processes share: the node's workers map one file (outlier.pxi) and update
# its counters concurrently, so each access is one atomic instruction, never a lock.
#
# Sequentially consistent where a decision rests on the value read (an ejection's
# compare-and-swap), relaxed for counters only ever summed or shown.

from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from *:
    """
    static inline uint32_t mn_load_u32(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mn_store_u32(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint32_t mn_add_u32(uint32_t* p, uint32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
    static inline int mn_cas_u32(uint32_t* p, uint32_t expected, uint32_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    static inline uint64_t mn_load_u64(const uint64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mn_store_u64(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint64_t mn_add_u64(uint64_t* p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
    static inline int mn_cas_u64(uint64_t* p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    static inline int64_t mn_load_i64(const int64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline int64_t mn_add_i64(int64_t* p, int64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
    static inline void mn_store_i64(int64_t* p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int mn_cas_i64(int64_t* p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    """
    uint32_t mn_load_u32(const uint32_t* p) nogil
    void mn_store_u32(uint32_t* p, uint32_t v) nogil
    uint32_t mn_add_u32(uint32_t* p, uint32_t v) nogil
    bint mn_cas_u32(uint32_t* p, uint32_t expected, uint32_t desired) nogil
    uint64_t mn_load_u64(const uint64_t* p) nogil
    void mn_store_u64(uint64_t* p, uint64_t v) nogil
    uint64_t mn_add_u64(uint64_t* p, uint64_t v) nogil
    bint mn_cas_u64(uint64_t* p, uint64_t expected, uint64_t desired) nogil
    int64_t mn_load_i64(const int64_t* p) nogil
    int64_t mn_add_i64(int64_t* p, int64_t v) nogil
    void mn_store_i64(int64_t* p, int64_t v) nogil
    bint mn_cas_i64(int64_t* p, int64_t expected, int64_t desired) nogil
