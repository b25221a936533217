# fastpath.includes.diag: the Linux netlink sock_diag declarations the engine uses to ask
# the kernel who owns a local caller's socket (NETLINK_SOCK_DIAG, inet_diag's exact
# lookup by 4-tuple; ss(8) uses the same). Linux-only, like the rest of the engine.
#
# Everything is nogil: the engine thread calls these with the GIL released.

from libc.stdint cimport uint8_t, uint16_t, uint32_t

from fastpath.includes.net cimport sockaddr, socklen_t


cdef extern from "<sys/socket.h>" nogil:
    const int SOCK_RAW
    const int MSG_DONTWAIT

    # The accepted socket's own address: the other half of the caller's 4-tuple.
    int getsockname(int fd, sockaddr* addr, socklen_t* length)
    ssize_t recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr,
                     socklen_t* length)


cdef extern from "<linux/netlink.h>" nogil:
    const int AF_NETLINK
    const int NETLINK_SOCK_DIAG
    const uint16_t NLM_F_REQUEST
    const uint16_t NLMSG_ERROR

    struct sockaddr_nl:
        unsigned short nl_family
        uint32_t nl_pid                # 0: the kernel
        uint32_t nl_groups

    struct nlmsghdr:
        uint32_t nlmsg_len             # including this header
        uint16_t nlmsg_type
        uint16_t nlmsg_flags
        uint32_t nlmsg_seq
        uint32_t nlmsg_pid

    struct nlmsgerr:
        int error                      # negative errno, 0 for an ACK
        nlmsghdr msg


cdef extern from "<linux/sock_diag.h>" nogil:
    const uint16_t SOCK_DIAG_BY_FAMILY


cdef extern from "<linux/inet_diag.h>" nogil:
    const uint32_t INET_DIAG_NOCOOKIE

    # Addresses and ports in network byte order; an IPv4 address is idiag_src[0].
    struct inet_diag_sockid:
        uint16_t idiag_sport
        uint16_t idiag_dport
        uint32_t idiag_src[4]
        uint32_t idiag_dst[4]
        uint32_t idiag_if
        uint32_t idiag_cookie[2]

    struct inet_diag_req_v2:
        uint8_t sdiag_family
        uint8_t sdiag_protocol
        uint8_t idiag_ext
        uint8_t pad
        uint32_t idiag_states
        inet_diag_sockid id

    struct inet_diag_msg:
        uint8_t idiag_family
        uint8_t idiag_state
        uint8_t idiag_timer
        uint8_t idiag_retrans
        inet_diag_sockid id
        uint32_t idiag_expires
        uint32_t idiag_rqueue
        uint32_t idiag_wqueue
        uint32_t idiag_uid
        uint32_t idiag_inode
