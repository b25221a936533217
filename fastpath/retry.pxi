# retry.pxi: A route's retries (Gateway API GEP-1731 `retry`): which requests are kept for
# replay, when a failed try is tried again (its answer's code, a connection that failed or
# ended before answering, a try's timeout), the backoff between tries, the retry budget
# that keeps retries from multiplying an outage, and the replay itself.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd
# (RetryPolicy, Conn.tries, CONN_KEPT, CONN_BACKOFF).
#
# What a retry sends again is what the failed try was sent: the request's bytes as they
# were edited for the hop (hop-by-hop fields gone, origin-form, the rule's header edits),
# kept whole at d2u offset 0 in the pair's own buffer. Nothing is framed or edited twice,
# so a rule that adds a header line may be retried too. A request is kept only when it is
# the one request in flight on the pair and all of it (head and body) fits
# Core.replay_max_bytes and the buffer; the requests a client pipelines behind a kept one
# wait in the buffer until its answer's head passes, so a retry never sends again a
# request that may have been answered already.
#
# The try's answer is judged at its head, before a byte of it reaches the client: a code
# the rule retries, with tries and budget left, is dropped with its upstream, which is
# closed (not pooled: the rest of that answer is never read); the pair waits out the
# backoff (CONN_BACKOFF, on the timer wheel) and sends the kept bytes to an endpoint the
# balancer picks, another than the failed one when the service has several. The last try's
# answer, and any a retry may not follow, go to the client as they came.
#
# Backoff: as Envoy's, from the rule's `backoff` (25 ms when unset): the n-th retry waits
# backoff x 2^(n-1) plus up to half that again at random, never more than 10 x backoff
# (Envoy's default max_interval) and never less than backoff (GEP-1731: "not retried
# before the configured minimum duration").
#
# Budget: a retry draws on its backend service's retry budget (budget.pxi: Linkerd's, as
# Gateway API XBackendTrafficPolicy sets it; 20 % of the service's requests over 10 s plus
# 10 retries a second unless a policy says otherwise). Over budget, the failed answer goes
# to the client as it came, and route_retries_over_budget counts it.
#
# Timeouts (GEP-1742 with GEP-1731): timeouts.request spans every try and the backoffs
# between them: when it comes first, the client gets 504 then, whatever try or wait is
# under way (GEP-1731: "the Gateway MUST immediately return a timeout error");
# timeouts.backendRequest bounds each try on its own, and a try that times out is retried
# like a connection that failed (GEP-1731: "Implementations SHOULD retry on connection
# errors (disconnect, reset, timeout, TCP failure)").


# --- deciding ---------------------------------------------------------------------------------

# `x-meshnode-failure: upstream` is what an app's node adds to the 502 it answers for an
# app that failed a request (closed or reset before answering, or answered what does not
# parse: _http_reply): to the caller's node that answer is the connection error it
# stands for, retried whatever the codes. The name is one the nodes own
# (http1.guarded_name): an app's node takes it out of every head an app answers
# (_cut_owned, in any spelling) before a byte of it leaves, a caller's node out of every
# head it passes to its client once it has read it, and no route may write it
# (routes_table.pxi). So only the app's node's own 502 carries it, and only the exact
# name and value are read.
#
# `x-envoy-overloaded` marks an answer its server made because it is overloaded: a node's
# overload defence sheds a request with it (overload.pxi), as Envoy's overload manager and
# circuit breakers mark their local replies. A retry would send the request back into the
# overload, so, as Envoy's router (RetryPolicy wouldRetryFromHeaders: any value, whoever
# wrote it), a try answered with the field is not retried, whatever its code. The name is
# not the nodes' own: an app may say it is overloaded too and is believed (it can stop
# only its own requests' retries), and its answer reaches the client with the field.
cdef enum:
    _FAILURE_NAME_LEN = 18          # "x-meshnode-failure"
    _FAILURE_VALUE_LEN = 8          # "upstream"
    _OVERLOADED_NAME_LEN = 18       # "x-envoy-overloaded"


cdef inline bint _retry_code(const RetryPolicy* p, int status) noexcept nogil:
    """Does `p` retry answers with `status`?"""
    return 400 <= status <= 599 and (p.codes[(status - 400) >> 6] >> ((status - 400) & 63)) & 1


cdef int _retry_status(const Conn* c, const char* b, const RespHead* resp) noexcept nogil:
    """The outcome of the kept request's try answered with the head at `b`: its status;
    0 (a connection error) for a 502 its node answered for a failed app; or -1 (never
    retried) for a code its rule retries on an answer that says its server is
    overloaded. The fields are read only in those two cases: other answers cost no look
    at them."""
    cdef const RetryPolicy* p = _kept_policy(c)
    cdef uint32_t i
    if resp.status == 502:
        for i in range(resp.header_count):
            if (resp.headers[i].name.len == _FAILURE_NAME_LEN
                    and guarded_name(b + resp.headers[i].name.off, _FAILURE_NAME_LEN)
                    == GUARDED_EXACT
                    and resp.headers[i].value.len == _FAILURE_VALUE_LEN
                    and memcmp(b + resp.headers[i].value.off, b"upstream",
                               _FAILURE_VALUE_LEN) == 0):
                return 0
    if p != NULL and _retry_code(p, resp.status):
        for i in range(resp.header_count):
            if (resp.headers[i].name.len == _OVERLOADED_NAME_LEN
                    and _lower_eq(b + resp.headers[i].name.off, b"x-envoy-overloaded",
                                  _OVERLOADED_NAME_LEN)):
                return -1
    return resp.status


cdef int _cut_owned(Core* core, Conn* c, uint32_t start, RespHead* resp,
                    int* rc) noexcept nogil:
    """A response head at u2d.buf + start (parsed into `resp`, `rc` bytes) loses its
    x-meshnode-failure lines, whoever wrote them: inbound the app (it cannot pass for
    its node), outbound the app's node (read already: _retry_status; it is not the
    client's). -1 when the head no longer parses (it cannot happen: a field line less)."""
    cdef Flow* f = &c.u2d
    cdef uint32_t i, cut
    for i in range(resp.header_count):
        if (resp.headers[i].name.len == _FAILURE_NAME_LEN
                and guarded_name(f.buf + start + resp.headers[i].name.off,
                                 _FAILURE_NAME_LEN) != GUARDED_NONE):
            break
    else:
        return 0                        # (the common case: one length test per field)
    cut = drop_owned(f.buf + start, f.tail - start, resp.headers, resp.header_count,
                     b"x-meshnode-failure", _FAILURE_NAME_LEN)
    f.tail -= cut
    rc[0] = parse_response_head(f.buf + start, f.tail - start, resp, &core.http_limits,
                                <Method>c.pend_method[c.pend_first])
    return 0 if rc[0] > 0 else -1

cdef inline const RetryPolicy* _kept_policy(const Conn* c) noexcept nogil:
    """The retry policy of the one request in flight (CONN_KEPT)."""
    return c.table.rules[c.pend_rule[c.pend_first]].retry


cdef int64_t _backoff_floor_ns(const RetryPolicy* p, uint32_t retry) noexcept nogil:
    """The least wait before retry number `retry` (1: the first): backoff x 2^(retry - 1),
    at most 10 x backoff."""
    cdef int64_t d = p.backoff_ns
    cdef uint32_t k = 1
    while k < retry and d < 10 * p.backoff_ns:
        d *= 2
        k += 1
    return d if d < 10 * p.backoff_ns else 10 * p.backoff_ns


cdef int64_t _try_deadline(const RouteRule* r, int64_t start_ns, int64_t try_ns) noexcept nogil:
    """When a try begun at `try_ns` of a request framed at `start_ns` times out: the
    sooner of the request's timeout and the try's own (0: neither is set)."""
    cdef int64_t due = 0
    if r.timeout_ns > 0:
        due = start_ns + r.timeout_ns
    if r.try_timeout_ns > 0 and (due == 0 or try_ns + r.try_timeout_ns < due):
        due = try_ns + r.try_timeout_ns
    return due


cdef bint _retry_wanted(Core* core, Conn* c, int status) noexcept nogil:
    """The try of the kept request failed: answered `status` (0: its connection failed,
    ended before an answer, or the try timed out; -1: an overloaded server's answer,
    _retry_status). Is it tried again? Yes when the rule
    retries that (every connection failure; the codes it lists), the request is whole
    in the buffer and nothing of the answer was passed on, tries are left, the request's
    timeout has not come, and the budget allows (counted: the caller goes on to
    _retry_begin). No: the try's outcome is the client's."""
    cdef const RetryPolicy* p
    cdef const RouteRule* r
    if not c.flags & CONN_KEPT or c.n_pend != 1:
        return False
    r = &c.table.rules[c.pend_rule[c.pend_first]]
    p = r.retry
    if p == NULL:
        return False
    if status != 0 and not _retry_code(p, status):
        return False
    if (c.req_phase != REQ_HEAD or c.resp_phase != RESP_HEAD or c.resp_fwd != 0
            or c.flags & (CONN_CLIENT_GONE | CONN_DRAINING | CONN_HTTP_REPLIED)
            or c.tries >= p.attempts):
        return False
    if r.timeout_ns > 0 and core.now_ns >= c.pend_start_ns[c.pend_first] + r.timeout_ns:
        return False
    if not _budget_withdraw(core, c):
        core.counters.route_retries_over_budget += 1
        return False
    return True


cdef int _retry_answer(Core* core, Conn* c, int status) noexcept nogil:
    """The kept request's final answer head came (`status`): STATUS_BACKOFF when its try
    is made again (_retry_wanted); STATUS_CLOSE when it would be but the request's
    timeout has come (its timer not run yet): 504 was answered, as at the timeout;
    else STATUS_OK: the answer is the client's, and the request is let go (the
    requests behind it may be framed)."""
    cdef const RouteRule* r = &c.table.rules[c.pend_rule[c.pend_first]]
    if _retry_wanted(core, c, status):
        return STATUS_BACKOFF
    c.flags &= ~CONN_KEPT
    if (r.timeout_ns > 0 and core.now_ns >= c.pend_start_ns[c.pend_first] + r.timeout_ns
            and r.retry != NULL and c.tries < r.retry.attempts
            and (status == 0 or _retry_code(r.retry, status))):
        core.counters.route_timeouts += 1
        _http_reply(core, c, 504, b"upstream request timeout\n", -1)
        return STATUS_CLOSE
    return STATUS_OK


cdef void _retry_keep(Core* core, Conn* c, const ReqHead* req, uint32_t base) noexcept nogil:
    """A request was just framed (its head at d2u.buf + base) on a rule with a retry
    policy (already counted for its service's budget: _http_framed): kept for replay when it is the one
    request in flight (its bytes the first framed), asks for no upgrade, and its head
    and body fit replay_max_bytes and the buffer (a Content-Length body's size is known
    now; a chunked one is let go when it outgrows them: _retry_grown, _http_d2u). Its
    bytes move to d2u offset 0."""
    cdef Flow* f = &c.d2u
    cdef int64_t whole = c.fwd
    c.tries = 0
    if (c.n_pend != 1 or base != f.head or c.upgrade != UPGRADE_NONE
            or c.flags & CONN_DRAINING):
        return
    if req.body == BODY_LENGTH:
        whole += req.content_length
    if whole > core.replay_max_bytes or whole > _d2u_cap(core, c):
        return
    if f.head > 0:
        # Nothing before it is owed (it is the one in flight): what is before it went.
        memmove(f.buf, f.buf + f.head, f.tail - f.head)
        f.tail -= f.head
        f.head = 0
    c.flags |= CONN_KEPT


cdef inline void _retry_grown(Core* core, Conn* c) noexcept nogil:
    """A kept request whose framed bytes outgrew replay_max_bytes (a chunked body) is
    let go: it will not be retried."""
    if c.d2u.head + c.fwd > core.replay_max_bytes:
        c.flags &= ~CONN_KEPT


# --- acting -----------------------------------------------------------------------------------

cdef void _retry_discard(Core* core, Conn* c) noexcept nogil:
    """Drop the pair's upstream and whatever it answered, and rewind the client's
    framed bytes: they are sent again, as they are, from d2u offset 0 (the caller
    knows they are whole there). The framing of both ways goes on where it was."""
    _load_release(core, c)
    _side_close(&c.up, False)
    c.up.readable = True
    c.up.hup = False
    c.flags &= ~(CONN_RETRYABLE | CONN_TICKET_WAIT | CONN_OFFERED_SESSION | CONN_SETTING_UP)
    free(c.peer_id)                     # the next try's upstream brings its own
    c.peer_id = NULL
    c.peer_id_length = 0
    if c.u2d.buf != NULL:
        _buf_put(core, c.u2d.buf)
    memset(&c.u2d, 0, sizeof(Flow))
    c.resp_phase = RESP_HEAD
    c.resp_fwd = 0
    c.resp_left = 0
    c.fwd += c.d2u.head
    c.d2u.head = 0
    c.d2u.shut = False
    _up_forget(c)


cdef int _retry_begin(Core* core, Conn* c) noexcept nogil:
    """The kept request's try failed and is made again (_retry_wanted said so): its
    upstream and answer go, and the pair waits out the backoff (CONN_BACKOFF), or
    until the request's timeout when that comes first."""
    cdef const RouteRule* r = &c.table.rules[c.pend_rule[c.pend_first]]
    cdef const RetryPolicy* p = r.retry
    cdef int64_t wait, cap, at
    c.tries += 1
    c.failed_endpoint = c.endpoint
    core.counters.route_retries += 1
    wait = _backoff_floor_ns(p, c.tries)
    wait += <int64_t>(_route_random(core) % <uint64_t>(wait // 2 + 1))
    cap = 10 * p.backoff_ns
    if wait > cap:
        wait = cap
    _retry_discard(core, c)
    if _waiting_client_left(c):         # (fault.pxi)
        # It reset before the backoff, after its FIN (its side no longer read): the
        # event that said so went by during the try, and _backoff_event gets no other.
        return _backoff_client_left(core, c)
    c.req_deadline_ns = 0
    c.state = CONN_BACKOFF
    at = core.now_ns + wait
    if r.timeout_ns > 0 and c.pend_start_ns[c.pend_first] + r.timeout_ns < at:
        at = c.pend_start_ns[c.pend_first] + r.timeout_ns
    _deadline_at(core, c, at)
    return STATUS_OK


cdef int _backoff_client_left(Core* core, Conn* c) noexcept nogil:
    """The client of a pair waiting out a backoff reset its connection: nobody is left
    to answer, so the kept request is not sent again. Counted as a client gone
    mid-request (aborted; the request counts as 0, no answer, when the pair closes);
    STATUS_RESET ends the pair (its upstream went already: _retry_discard)."""
    c.flags |= CONN_CLIENT_GONE
    _counters_of(core, c).aborted += 1
    return STATUS_RESET


cdef inline bint _client_reset(const Conn* c) noexcept nogil:
    """Has the client's socket an error pending (a reset the pump did not read: it
    came after the client's FIN, when its side is no longer read)?"""
    cdef int err = 0
    cdef net.socklen_t length = sizeof(err)
    if c.down.fd < 0 or net.getsockopt(c.down.fd, net.SOL_SOCKET, net.SO_ERROR, &err,
                                       &length) != 0:
        return True
    return err != 0


cdef int _backoff_event(Core* core, Conn* c, uint32_t events) noexcept nogil:
    """An event on the client of a pair waiting out a backoff (CONN_BACKOFF). A reset
    (EPOLLERR, EPOLLHUP: we have not ended our side) ends the pair. A FIN alone does
    not: a client that half-closes after its whole request (HTTP/1.0 clients, `nc -q`)
    still waits for the answer, and TCP does not tell such a FIN from that of a client
    that closed its socket (the retry is made; a send to a closed client fails then,
    counted the same way). More bytes (pipelined requests) wait in the socket."""
    if events & (net.EPOLLERR | net.EPOLLHUP):
        return _backoff_client_left(core, c)
    return STATUS_OK


cdef int _retry_fire(Core* core, Conn* c) noexcept nogil:
    """The backoff is over: the kept request's next try, on its own backendRequest
    timeout, to an endpoint other than the failed one when there is another. Or the
    request's timeout came during it: 504. Or its client reset (_backoff_event: a
    reset that came while the pump no longer read the client): the pair ends."""
    cdef uint32_t i = c.pend_first
    cdef const RouteRule* r = &c.table.rules[c.pend_rule[i]]
    if _client_reset(c):
        return _backoff_client_left(core, c)
    if r.timeout_ns > 0 and core.now_ns >= c.pend_start_ns[i] + r.timeout_ns:
        core.counters.route_timeouts += 1
        _http_reply(core, c, 504, b"upstream request timeout\n", -1)
        return STATUS_CLOSE
    c.setup_tries = 0
    c.pend_deadline[i] = _try_deadline(r, c.pend_start_ns[i], core.now_ns)
    c.req_deadline_ns = c.pend_deadline[i]
    return _http_upstream(core, c, <int64_t>c.failed_endpoint)


cdef void _bind_other(Core* core, Conn* c, Service* svc, uint32_t avoid) noexcept nogil:
    """c was bound to `avoid`, the endpoint that just failed: the balancer picks again,
    and should it keep to that one, the next endpoint not passed over is taken."""
    cdef uint32_t k
    _bind_endpoint(core, c, svc)
    if c.endpoint != avoid:
        return
    k = _first_up(core, svc, (avoid + 1) % svc.n_endpoints)
    if k == avoid:
        k = (avoid + 1) % svc.n_endpoints
    _load_release(core, c)
    c.endpoint = k
    c.flags |= CONN_EP_BOUND
    _load_move(core, c, <int32_t>c.n_pend, -1)


# --- the rule's policy, from RouteTable.add_route_rule(retry=) (GIL held) -----------------------

_RETRY_DEFAULTS = {"attempts": 1, "codes": (), "backoff_s": 0.025}


cdef tuple _retry_args(object retry, str name):
    """add_route_rule's `retry` checked: a dict of _RETRY_DEFAULTS' keys (any left out
    take those defaults: Envoy's one retry and 25 ms), as a tuple in that order; None
    stays None. (The budget is the backend service's: RouteTable.set_retry_budget.)"""
    if retry is None:
        return None
    unknown = set(retry) - set(_RETRY_DEFAULTS)
    if unknown:
        raise ValueError("rule %r retry: unknown %s" % (name, ", ".join(sorted(unknown))))
    a = dict(_RETRY_DEFAULTS, **retry)
    codes = tuple(sorted({int(code) for code in a["codes"]}))
    if any(not 400 <= code <= 599 for code in codes):
        raise ValueError("rule %r retry: codes must be 400..599, not %r" % (name, a["codes"]))
    if not 1 <= int(a["attempts"]) <= 0xFFFFFFFF:
        raise ValueError("rule %r retry: attempts must be at least 1, not %r" % (name, a["attempts"]))
    if not 0 <= float(a["backoff_s"]) <= 86400:
        raise ValueError("rule %r retry: backoff_s must be 0..86400, not %r" % (name, a["backoff_s"]))
    return (int(a["attempts"]), codes, float(a["backoff_s"]))


cdef RetryPolicy* _retry_policy(tuple args) except? NULL:
    """The C policy of a checked `retry` (NULL: None), owned by its rule."""
    cdef RetryPolicy* p
    if args is None:
        return NULL
    p = <RetryPolicy*>calloc(1, sizeof(RetryPolicy))
    if p == NULL:
        raise MemoryError()
    attempts, codes, backoff_s = args
    p.attempts = attempts
    for code in codes:
        p.codes[(code - 400) >> 6] |= (<uint64_t>1) << ((code - 400) & 63)
    p.backoff_ns = <int64_t>(backoff_s * 1e9)
    return p
