# callers.pxi: Who is calling (DESIGN §4): the local workload a connection accepted on an
# outbound listener comes from, told apart by the OS account that owns the calling
# socket or by the caller's address; a caller that matches no workload is refused and
# counted, never given another workload's identity.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# Why the kernel: any local process can bind any 127.x address, so on a host with several
# workloads a source address proves nothing. The owner of a socket is fixed by the kernel
# when the socket is made (SPIRE's unix attestor selects workloads by it, there through
# SO_PEERCRED). Over loopback the caller's socket is the one whose local end is the
# accepted socket's remote end: inet_diag's exact lookup (SOCK_DIAG_BY_FAMILY with that
# 4-tuple, as ss(8) does) finds it and says its idiag_uid. One request and one reply on
# the engine's netlink socket, answered within the send (the kernel's sock_diag handler
# runs in the sender's context): two system calls per accepted connection, made only
# for tables that tell callers apart by user, and never again for that connection (the
# answer stays on the Conn when it moves to a newer table).


# The caller's socket must be a full one in a connected state (include/net/tcp_states.h:
# ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING): inet_diag reports
# uid 0 for time-wait and request sockets, which no caller owns. That is not enough: a
# caller that closed its socket before the accept leaves a time-wait socket whose
# reported state is its substate, FIN_WAIT2, with uid 0 (inet_twsk_diag_fill), so the
# socket must also still be a process's (an inode): else any local user could write a
# request, close, and be taken for root's workload.
cdef uint32_t _CALLER_STATES = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11)

# Replies read per lookup at most: stale replies of lookups that gave up come first.
cdef int _DIAG_READS = 8


cdef struct _DiagRequest:
    diag.nlmsghdr nlh
    diag.inet_diag_req_v2 req


cdef int _diag_socket(Core* core) noexcept nogil:
    """The engine's NETLINK_SOCK_DIAG socket, opened at the first lookup; -1 when the
    kernel has none (the lookup fails: the caller is refused)."""
    cdef diag.sockaddr_nl kernel
    cdef int fd
    if core.diag_fd >= 0:
        return core.diag_fd
    fd = net.socket(diag.AF_NETLINK, diag.SOCK_RAW | net.SOCK_CLOEXEC, diag.NETLINK_SOCK_DIAG)
    if fd < 0:
        return -1
    memset(&kernel, 0, sizeof(kernel))
    kernel.nl_family = diag.AF_NETLINK
    # Connected to the kernel (port id 0), the socket takes no unicast from any other
    # sender: no local process can answer for the kernel (each reply's sender is
    # checked as well).
    if net.connect(fd, <net.sockaddr*>&kernel, sizeof(kernel)) != 0:
        close(fd)
        return -1
    core.diag_fd = fd
    return fd


cdef int _sock_owner(Core* core, int fd, const net.sockaddr_storage* peer,
                     uint32_t* uid) noexcept nogil:
    """The uid owning the local socket at the far end of accepted TCP socket `fd`,
    whose peer is `peer`: 0 and `uid` set, or -1 when the kernel does not say (the
    caller is gone or not on this host, no sock_diag)."""
    cdef net.sockaddr_storage local
    cdef net.socklen_t length = sizeof(local)
    cdef _DiagRequest rq
    cdef uint64_t reply[1024]          # 8 KiB, aligned for the headers in it
    cdef diag.sockaddr_nl sender
    cdef net.socklen_t sender_len
    cdef diag.nlmsghdr* h
    cdef diag.inet_diag_msg* m
    cdef ssize_t got
    cdef size_t n, at
    cdef int i, dfd
    if (diag.getsockname(fd, <net.sockaddr*>&local, &length) != 0
            or local.ss_family != peer.ss_family):
        return -1
    memset(&rq, 0, sizeof(rq))
    rq.nlh.nlmsg_len = sizeof(rq)
    rq.nlh.nlmsg_type = diag.SOCK_DIAG_BY_FAMILY
    rq.nlh.nlmsg_flags = diag.NLM_F_REQUEST
    rq.req.sdiag_family = <uint8_t>peer.ss_family
    rq.req.sdiag_protocol = net.IPPROTO_TCP
    rq.req.idiag_states = 0xffffffff
    rq.req.id.idiag_cookie[0] = diag.INET_DIAG_NOCOOKIE
    rq.req.id.idiag_cookie[1] = diag.INET_DIAG_NOCOOKIE
    # The caller's socket: its source is our peer, its destination our local end.
    if peer.ss_family == net.AF_INET:
        rq.req.id.idiag_sport = (<net.sockaddr_in*>peer).sin_port
        rq.req.id.idiag_dport = (<net.sockaddr_in*>&local).sin_port
        memcpy(&rq.req.id.idiag_src[0], &(<net.sockaddr_in*>peer).sin_addr, 4)
        memcpy(&rq.req.id.idiag_dst[0], &(<net.sockaddr_in*>&local).sin_addr, 4)
    elif peer.ss_family == net.AF_INET6:
        rq.req.id.idiag_sport = (<net.sockaddr_in6*>peer).sin6_port
        rq.req.id.idiag_dport = (<net.sockaddr_in6*>&local).sin6_port
        memcpy(&rq.req.id.idiag_src[0], &(<net.sockaddr_in6*>peer).sin6_addr, 16)
        memcpy(&rq.req.id.idiag_dst[0], &(<net.sockaddr_in6*>&local).sin6_addr, 16)
    else:
        return -1
    dfd = _diag_socket(core)
    if dfd < 0:
        return -1
    core.diag_seq += 1
    rq.nlh.nlmsg_seq = core.diag_seq
    if net.send(dfd, &rq, sizeof(rq), 0) != <ssize_t>sizeof(rq):
        return -1
    for i in range(_DIAG_READS):
        sender_len = sizeof(sender)
        got = diag.recvfrom(dfd, reply, sizeof(reply), diag.MSG_DONTWAIT,
                            <net.sockaddr*>&sender, &sender_len)
        if got < 0:
            if errno == EINTR:
                continue
            return -1                   # EAGAIN: no answer (it comes within the send)
        if sender.nl_pid != 0:
            continue                    # not the kernel's
        n = <size_t>got
        at = 0
        while at + sizeof(diag.nlmsghdr) <= n:
            h = <diag.nlmsghdr*>(<char*>reply + at)
            if h.nlmsg_len < sizeof(diag.nlmsghdr) or h.nlmsg_len > n - at:
                break
            if h.nlmsg_seq == core.diag_seq:
                # NLMSG_ERROR (ENOENT: no such socket) or an answer too short: no owner.
                if (h.nlmsg_type != diag.SOCK_DIAG_BY_FAMILY
                        or h.nlmsg_len < sizeof(diag.nlmsghdr) + sizeof(diag.inet_diag_msg)):
                    return -1
                m = <diag.inet_diag_msg*>(<char*>h + sizeof(diag.nlmsghdr))
                if (m.idiag_state >= 32 or not (_CALLER_STATES >> m.idiag_state) & 1
                        or m.idiag_inode == 0
                        or m.id.idiag_sport != rq.req.id.idiag_sport
                        or m.id.idiag_dport != rq.req.id.idiag_dport):
                    return -1
                uid[0] = m.idiag_uid
                return 0
            at += (h.nlmsg_len + 3) & ~(<size_t>3)     # NLMSG_ALIGN
    return -1


cdef Source* _caller_source(Core* core, Conn* c, Table* t) noexcept nogil:
    """The source of `t` that outbound pair c's caller is (the first that matches),
    or NULL. By user, the caller's socket owner is asked of the kernel the first time
    a table needs it, and kept on the Conn."""
    cdef uint32_t i
    cdef Source* s
    if t.callers_by_user:
        if c.caller == CALLER_NOT_ASKED and c.down.fd >= 0:
            core.counters.caller_lookups += 1
            if _sock_owner(core, c.down.fd, &c.peer_addr, &c.caller_uid) == 0:
                c.caller = CALLER_KNOWN
            else:
                c.caller = CALLER_UNKNOWN
                core.counters.caller_lookup_failures += 1
        if c.caller != CALLER_KNOWN:
            return NULL
    for i in range(t.n_sources):
        s = &t.sources[i]
        if t.callers_by_user and s.uid != <int64_t>c.caller_uid:
            continue
        if s.addr.ss_family != 0 and not _same_ip(&s.addr, &c.peer_addr):
            continue
        return s
    return NULL


cdef int _caller_refused(Core* core, Conn* c) noexcept nogil:
    """A local caller that matches no local workload: an HTTP one gets 403 saying why,
    an opaque one is closed; counted either way. STATUS_CLOSE."""
    cdef char body[256]
    cdef int n
    core.counters.callers_refused += 1
    if not c.flags & CONN_HTTP:
        return STATUS_CLOSE
    if c.table.callers_by_user and c.caller == CALLER_KNOWN:
        n = snprintf(body, sizeof(body),
                     b"caller refused: no local workload runs as uid %u (Workload spec.user)\n",
                     c.caller_uid)
    elif c.table.callers_by_user:
        n = snprintf(body, sizeof(body),
                     b"caller refused: the owner of the calling socket is not known\n")
    elif c.table.n_sources > 0:
        n = snprintf(body, sizeof(body),
                     b"caller refused: no local workload calls from this address "
                     b"(Workload spec.address)\n")
    else:
        n = snprintf(body, sizeof(body),
                     b"caller refused: local workloads cannot be told apart here "
                     b"(give each its own spec.user or spec.address)\n")
    _http_reply(core, c, 403, body, n)
    return STATUS_CLOSE


# --- install (GIL held): RouteTable.add_source() and add_user() -----------------------------

cdef int _source_add(RouteTable table, str address, object client_ctx,
                     str identity) except -1:
    """RouteTable.add_source(): a caller told apart by its address."""
    if any(entry[3] >= 0 for entry in table._sources):
        raise ValueError("callers are told apart by user in this table (add_user)")
    return _caller_add(table, address, client_ctx, identity, -1)


cdef int _user_add(RouteTable table, long long uid, object client_ctx, str identity,
                   str address) except -1:
    """RouteTable.add_user(): a caller told apart by the OS user owning its socket."""
    if not 0 <= uid <= 0xfffffffe:
        raise ValueError("uid must be 0..4294967294, not %d" % uid)
    if any(entry[3] < 0 for entry in table._sources):
        raise ValueError("callers are told apart by address in this table (add_source)")
    return _caller_add(table, address, client_ctx, identity, uid)


cdef int _caller_add(RouteTable table, str address, object client_ctx, str identity,
                     long long uid) except -1:
    cdef net.sockaddr_storage addr
    cdef net.socklen_t length
    if (<TLSContext>client_ctx).server:
        raise ValueError("outbound needs a client TLSContext")
    if address is not None:
        _sockaddr(address, 1, &addr, &length)   # the port is not compared
    table._sources.append((address, client_ctx, _spiffe_id(identity), uid))
    return 0
