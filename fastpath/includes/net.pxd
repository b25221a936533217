# fastpath.includes.net: the Linux/POSIX declarations the engine uses that Cython does
# not ship: sockets and addresses, epoll, eventfd, pthread mutexes, and one compiler
# builtin.
#
# What Cython ships is cimported from there instead (libc.errno, posix.unistd for
# close/read/write, posix.fcntl for open, posix.time for clock_gettime). Linux-only:
# epoll, eventfd, accept4 and SOCK_NONBLOCK/SOCK_CLOEXEC have no portable equivalent,
# and the engine is a Linux data plane (DESIGN.md §1: workers share listeners with
# SO_REUSEPORT). accept4 needs _GNU_SOURCE, which Python.h (pyconfig.h) defines before
# any system header.
#
# Everything is nogil: the engine thread calls these with the GIL released.

from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family
    # Large and aligned enough for any address family: endpoints are kept in these.
    struct sockaddr_storage:
        sa_family_t ss_family
    struct linger:
        int l_onoff
        int l_linger

    const int AF_INET
    const int AF_INET6
    const int SOCK_STREAM
    const int SOCK_NONBLOCK
    const int SOCK_CLOEXEC
    const int SOL_SOCKET
    const int SO_ERROR
    const int SO_LINGER
    const int SHUT_WR
    # send() flag: EPIPE instead of SIGPIPE on a socket whose peer is gone.
    const int MSG_NOSIGNAL
    # recv() flag: look at bytes without taking them (the inbound port's first byte).
    const int MSG_PEEK

    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr* addr, socklen_t length)
    int accept4(int fd, sockaddr* addr, socklen_t* length, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int getsockopt(int fd, int level, int name, void* value, socklen_t* length)
    int setsockopt(int fd, int level, int name, const void* value, socklen_t length)


cdef extern from "<netinet/in.h>" nogil:
    const int IPPROTO_TCP

    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port              # network byte order
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port             # network byte order
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    uint16_t htons(uint16_t host)


cdef extern from "<netinet/tcp.h>" nogil:
    const int TCP_NODELAY


cdef extern from "<arpa/inet.h>" nogil:
    # 1 on success, 0 when `src` is not an address of family `af`.
    int inet_pton(int af, const char* src, void* dst)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    # Packed on x86-64 in glibc; the compiler sees the real definition.
    struct epoll_event:
        uint32_t events
        epoll_data_t data

    const int EPOLL_CLOEXEC
    const int EPOLL_CTL_ADD
    const int EPOLL_CTL_DEL
    const int EPOLL_CTL_MOD
    # uint32_t: EPOLLET is 1u << 31.
    const uint32_t EPOLLIN
    const uint32_t EPOLLOUT
    const uint32_t EPOLLERR
    const uint32_t EPOLLHUP
    const uint32_t EPOLLRDHUP
    const uint32_t EPOLLET

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout_ms)


cdef extern from "<sys/eventfd.h>" nogil:
    const int EFD_NONBLOCK
    const int EFD_CLOEXEC

    int eventfd(unsigned int initval, int flags)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass

    int pthread_mutex_init(pthread_mutex_t* mutex, const pthread_mutexattr_t* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)


cdef extern from * nogil:
    # GCC and Clang (no header): the index of the lowest set bit, one instruction (tzcnt,
    # bsf); undefined for 0. The timer wheel finds its next non-empty list with it.
    int __builtin_ctzll(unsigned long long x)
