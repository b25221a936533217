# fault.pxi: Fault injection on a route rule: Istio's HTTPFaultInjection (a fixed delay, an
# abort with an HTTP status, each with its own chance) carried by an HTTPRoute ExtensionRef
# filter naming a meshnode.io FaultInjection; and the 500 of such a filter that names
# nothing meshnode has (the Gateway API: an unresolved filter is never skipped).
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd
# (RouteFault, RouteRule.fault, Conn.fault_until_ns).
#
# How a fault reaches the path. _route_pick (routes.pxi) draws the rule's faults when it
# picks the rule and says what it drew in the status it returns: _FAULT_ANSWER | status
# (an abort: answered at once, no backend is contacted), _FAULT_UNRESOLVED | 500, or
# _FAULT_HOLD | what comes once the delay is over (0: forward; an abort drawn as well is
# answered then, as Envoy's fault filter delays first and aborts after). A request framed
# behind others on a keep-alive pair keeps that decision (CONN_ROUTE_DECIDED) until the
# pair switches for it, so every held request waits in HTTP_HEAD with nothing owed before
# it and no upstream: its head at d2u offset 0, nothing more read from the client, the
# pair's one timer filed for the end of the delay while the worker serves other pairs.
# A table pushed during the delay routes the request afresh when it is released (the
# carry rule: a request is routed on the table current when its head is framed), but
# its faults are not drawn again: it keeps the delay it served and the abort drawn with
# it (Conn.fault_kept), so pushes neither restart nor add delays.
# No allocation: the pair holds only the buffer its head is in. A client that resets
# while held closes the pair at once; slot, buffer and timer go back. One that only
# half-closed after its whole request (a FIN: HTTP/1.0 clients, `nc -q`) gets its answer
# after the delay, as it does from the path without one and from a retry's backoff: TCP
# does not tell that FIN from a closed socket's, and answering a client that closed
# costs one send that fails.

cdef enum:
    # _route_pick's status bits for a fault (a plain status is below 0x1000).
    _FAULT_ANSWER = 0x1000          # | status: a fault abort
    _FAULT_UNRESOLVED = 0x2000      # | 500: the rule's ExtensionRef did not resolve
    _FAULT_HOLD = 0x4000            # | what follows the delay
    _FAULT_STATUS = 0x0fff
    # Chances in parts per million, as Istio hands a percentage to Envoy
    # (FractionalPercent, denominator MILLION): 0.0001 % is the finest.
    _FAULT_PPM = 1000000

# The longest fixedDelay a table takes (a day, as the longest route timeout).
FAULT_DELAY_MAX_S = 86400.0
# Statuses whose answer has no content (RFC 9110 §15.3.5, §15.3.6, §15.4.5): the engine's
# own answers always carry a text body, so an abort with one of them is refused.
FAULT_STATUSES_WITHOUT_CONTENT = (204, 205, 304)


cdef inline bint _fault_draw(Core* core, uint32_t ppm) noexcept nogil:
    if ppm >= _FAULT_PPM:
        return True
    if ppm == 0:
        return False
    return (_route_random(core) >> 16) % _FAULT_PPM < ppm


cdef int _fault_pick(Core* core, Conn* c, const RouteFault* f) noexcept nogil:
    """The faults a request its rule takes gets: 0, or _route_pick's fault status (a
    delay drawn is kept in c.fault_delay_ns: the backend picked may have its own rule)."""
    cdef int out = 0
    if f.unresolved:
        return _FAULT_UNRESOLVED | 500
    if f.abort_status != 0 and _fault_draw(core, f.abort_ppm):
        out = _FAULT_ANSWER | f.abort_status
    if f.delay_ns > 0 and _fault_draw(core, f.delay_ppm):
        out |= _FAULT_HOLD
        c.fault_delay_ns = f.delay_ns
    return out


cdef void _fault_answer(Core* core, Conn* c, int st) noexcept nogil:
    """The engine's answer for a fault status (not _FAULT_HOLD): the abort's status, or
    500 for a filter that did not resolve; the pair closes after it (_http_reply)."""
    if st & _FAULT_UNRESOLVED:
        core.counters.route_filter_unresolved += 1
        _http_reply(core, c, st & _FAULT_STATUS, b"route filter not resolved\n", -1)
    else:
        core.counters.faults_aborted += 1
        c.acc_flags |= AFLAG_FI
        _http_reply(core, c, st & _FAULT_STATUS, b"fault filter abort\n", -1)


cdef int _fault_hold(Core* core, Conn* c, uint32_t backend, int32_t rule,
                     int after) noexcept nogil:
    """_http_route, a request its rule delays: keep the route decided (backend, rule,
    and `after`, the status that follows the delay: 0 or an abort) and wait."""
    c.flags |= CONN_ROUTE_DECIDED
    c.decided_service = backend
    c.decided_rule = rule
    c.decided_status = <uint16_t>after
    c.fault_until_ns = core.now_ns + c.fault_delay_ns
    core.counters.faults_delayed += 1
    _deadline_at(core, c, c.fault_until_ns)
    # A client that reset already (after its FIN, read before this request was routed,
    # as a pipelined one is after a switch) sends no event while held: looked at now.
    return _fault_waiting(core, c)


cdef inline bint _waiting_client_left(const Conn* c) noexcept nogil:
    """Has the client of a request held here (a fault delay) or waiting for pool room
    (pool.pxi) reset? A FIN alone is a client that half-closed after its whole request,
    as HTTP/1.1 allows: it still waits for its answer, as on the path that does not
    wait (retry.pxi _client_reset, _backoff_event)."""
    return c.down.hup and _client_reset(c)


cdef inline int _fault_waiting(Core* core, Conn* c) noexcept nogil:
    """An event on a held pair's client: it left (a reset), or sent more, or ended its
    side, which stays in the socket until the held request is on its way."""
    return STATUS_CLOSE if _waiting_client_left(c) else STATUS_OK


cdef int _fault_release(Core* core, Conn* c) noexcept nogil:
    """The delay is over (the pair's timer fired): the head is routed as decided."""
    c.fault_until_ns = 0
    if _waiting_client_left(c):
        return STATUS_CLOSE             # gone before its delay ended: nobody to answer
    # The request keeps what was drawn for it (routed again on a table pushed during the
    # delay, its faults are not drawn again: the delay would start over, push by push).
    c.fault_kept = c.decided_status
    _deadline_at(core, c, core.now_ns + core.connect_timeout_ns)
    return _http_head(core, c)


# --- install (GIL held): RouteTable.add_route_fault() and the table's compile -------------


cdef uint32_t _fault_ppm(double percent, str what) except? 0:
    if not 0.0 <= percent <= 100.0:
        raise ValueError("%s must be 0..100, not %r" % (what, percent))
    return <uint32_t>(percent * (_FAULT_PPM / 100) + 0.5)


cdef tuple _fault_spec(int rule_index, double delay_s, double delay_percent,
                       int abort_status, double abort_percent, bint unresolved):
    """add_route_fault()'s arguments checked, as _faults_build takes them."""
    what = "rule %d fault" % rule_index
    if not 0.0 <= delay_s <= FAULT_DELAY_MAX_S:
        raise ValueError("%s: delay_s must be 0..%g, not %r" % (what, FAULT_DELAY_MAX_S, delay_s))
    if abort_status != 0 and not 200 <= abort_status <= 599:
        raise ValueError("%s: abort_status must be 200..599, not %d" % (what, abort_status))
    if abort_status in FAULT_STATUSES_WITHOUT_CONTENT:
        raise ValueError("%s: an abort with %d (an answer without content) is not implemented"
                         % (what, abort_status))
    return (<int64_t>(delay_s * 1e9), _fault_ppm(delay_percent, what + ": delay_percent"),
            abort_status, _fault_ppm(abort_percent, what + ": abort_percent"), unresolved)


cdef int _fault_add(RouteTable table, int rule_index, double delay_s, double delay_percent,
                    int abort_status, double abort_percent, bint unresolved) except -1:
    """RouteTable.add_route_fault(): rule `rule_index`'s fault, kept for _faults_build."""
    if not 0 <= rule_index < len(table._route_rules):
        raise ValueError("no route rule %d" % rule_index)
    table._route_faults.append((rule_index, _fault_spec(
        rule_index, delay_s, delay_percent, abort_status, abort_percent, unresolved)))
    return 0


cdef int _faults_build(Table* t, list faults) except -1:
    """Each rule's RouteFault (after _routes_build: the rules exist); the rule owns it
    (_routes_free). A later fault for one rule replaces an earlier one."""
    cdef RouteFault* f
    for rule_index, (delay_ns, delay_ppm, status, abort_ppm, unresolved) in faults:
        f = <RouteFault*>calloc(1, sizeof(RouteFault))
        if f == NULL:
            raise MemoryError()
        free(t.rules[rule_index].fault)
        t.rules[rule_index].fault = f
        f.delay_ns = delay_ns
        f.delay_ppm = delay_ppm
        f.abort_status = status
        f.abort_ppm = abort_ppm
        f.unresolved = unresolved
    return 0
