# authz_table.pxi: AuthorizationPolicy's part of a table: the program control compiles
# (the contract: the control/engine spec of the authorization program) checked whole
# and flattened into the arrays authz.pxi judges by, owned by the table's inbound route.
#
# Included into fastpath/engine.pyx (one extension); the state it touches is in engine.pxd.
#
# A program that does not check out raises ValueError naming the part (policies[1].rules
# [0].to[0].paths.values[2]...) and nothing is installed: the table keeps what it had.

import ipaddress

# The most one program may hold: what the control side may hand a worker for one
# inbound route (the AuthorizationPolicies reaching one workload's port), checked
# before the engine allocates it. Generous for real meshes (thousands of rules of a few
# values each; a value takes 36 bytes of a worker's table, a match 32), and far below
# what the program's uint32 offsets could index. meshnode's control side refuses
# a config over them by name (meshnode.config.authzsize).
AUTHZ_MAX_POLICIES = 4096           # policies
AUTHZ_MAX_LEAVES = 65536            # values, and each of: matches, clauses, rules
AUTHZ_MAX_TEXT_BYTES = 4194304      # names and string values, in bytes

_AUTHZ_ACTIONS = {"ALLOW": AUTHZ_ALLOW, "DENY": AUTHZ_DENY, "AUDIT": AUTHZ_AUDIT}
# Field -> (AuthzField, leaf type): a SOURCE's, an OPERATION's, a CONDITION's keys.
_AUTHZ_SOURCE = {"principals": (AZ_PRINCIPAL, "str"), "namespaces": (AZ_NAMESPACE, "str"),
                 "ipBlocks": (AZ_SOURCE_IP, "ip"), "remoteIpBlocks": (AZ_REMOTE_IP, "ip")}
_AUTHZ_OPERATION = {"hosts": (AZ_HOST, "host"), "ports": (AZ_DEST_PORT, "port"),
                    "methods": (AZ_METHOD, "str"), "paths": (AZ_PATH, "path")}
_AUTHZ_CONDITION = {"source.ip": (AZ_SOURCE_IP, "ip"), "remote.ip": (AZ_REMOTE_IP, "ip"),
                    "source.namespace": (AZ_NAMESPACE, "str"),
                    "source.principal": (AZ_PRINCIPAL, "str"),
                    "destination.ip": (AZ_DEST_IP, "ip"),
                    "destination.port": (AZ_DEST_PORT, "port"),
                    "connection.sni": (AZ_SNI, "str")}
_AUTHZ_STRING_KINDS = {"exact": AZ_EXACT, "prefix": AZ_PREFIX, "suffix": AZ_SUFFIX}


cdef class _AuthzCompiler:
    """One program flattened: the arrays in the order authz.pxi indexes them."""
    cdef list policies, rules, clauses, matches, leaves
    cdef bytearray text
    cdef uint32_t want

    def __cinit__(self):
        self.policies, self.rules, self.clauses, self.matches, self.leaves = [], [], [], [], []
        self.text = bytearray()
        self.want = 0

    cdef tuple _string(self, bytes b):
        self.text += b
        return (len(self.text) - len(b), len(b))

    cdef tuple _leaf(self, object leaf, str kind, str what):
        """(AuthzLeafKind, bits, off, length, addr bytes, port, v6)."""
        if not isinstance(leaf, (list, tuple)) or not leaf or not isinstance(leaf[0], str):
            raise ValueError(f"{what}: a leaf is [kind, value], not {leaf!r}")
        name = leaf[0]
        if kind == "ip":
            if name != "cidr" or len(leaf) != 2 or not isinstance(leaf[1], str):
                raise ValueError(f"{what}: an address leaf is ['cidr', 'A.B.C.D/N'], not {leaf!r}")
            try:
                net = ipaddress.ip_network(leaf[1], strict=True)
            except ValueError as e:
                raise ValueError(f"{what}: {leaf[1]!r} is not a CIDR block ({e})") from None
            if net.version == 4:
                return (AZ_CIDR, net.prefixlen + 96, 0, 0,
                        b"\0" * 10 + b"\xff\xff" + net.network_address.packed, 0, False)
            return (AZ_CIDR, net.prefixlen, 0, 0, net.network_address.packed, 0, True)
        if kind == "port":
            if (name != "port" or len(leaf) != 2 or type(leaf[1]) is not int
                    or not 1 <= leaf[1] <= 65535):
                raise ValueError(f"{what}: a port leaf is ['port', 1..65535], not {leaf!r}")
            return (AZ_PORT, 0, 0, 0, b"", leaf[1], False)
        if name == "any" and len(leaf) == 1:
            return (AZ_ANY, 0, 0, 0, b"", 0, False)
        if len(leaf) != 2 or not isinstance(leaf[1], str):
            raise ValueError(f"{what}: a string leaf is [kind, str] or ['any'], not {leaf!r}")
        value = leaf[1]
        if name == "template" and kind == "path":
            _check_template(value, what)
            return (AZ_TEMPLATE, 0, *self._string(value.encode()), b"", 0, False)
        if name not in _AUTHZ_STRING_KINDS:
            raise ValueError(f"{what}: leaf kind {name!r} is not one of "
                             f"{sorted(_AUTHZ_STRING_KINDS) + ['any'] + (['template'] if kind == 'path' else [])}")
        # Hosts compare without case (the request's side is lowered as it is read).
        return (_AUTHZ_STRING_KINDS[name], 0,
                *self._string((value.lower() if kind == "host" else value).encode()), b"", 0,
                False)

    cdef tuple _leaves(self, object leaves, str kind, str what):
        """(first, count, given) of `leaves` (None, or [] as Istio takes it: not given)."""
        if leaves is None:
            return (len(self.leaves), 0, False)
        if not isinstance(leaves, list):
            raise ValueError(f"{what}: a list of leaves or None, not {leaves!r}")
        first = len(self.leaves)
        for i, leaf in enumerate(leaves):
            self.leaves.append(self._leaf(leaf, kind, f"{what}[{i}]"))
        return (first, len(leaves), len(leaves) > 0)

    cdef int _match(self, uint8_t field, str kind, object spec, bytes name, bint condition,
                    str what) except -1:
        """One AuthzMatch from {"values": ..., "not": ...} (a CONDITION's has "key" too)."""
        if not isinstance(spec, dict):
            raise ValueError(f"{what}: a match is a dict, not {spec!r}")
        unknown = set(spec) - ({"values", "not", "key"} if condition else {"values", "not"})
        if unknown:
            raise ValueError(f"{what}: unknown key(s) {sorted(unknown)}")
        first, count, given = self._leaves(spec.get("values"), kind, f"{what}.values")
        nfirst, ncount, _ = self._leaves(spec.get("not"), kind, f"{what}.not")
        name_off, name_len = self._string(name) if name else (0, 0)
        self.matches.append((field, name_off, name_len, given, first, count, nfirst, ncount))
        self.want |= 1u << field
        return 0

    cdef tuple _clauses(self, object items, dict fields, str what):
        """(any, first, count) of a rule's `from` or `to`."""
        if items is None:
            return (True, 0, 0)
        if not isinstance(items, list):
            raise ValueError(f"{what}: a list or None, not {items!r}")
        first = len(self.clauses)
        pending = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(f"{what}[{i}]: a dict of fields, not {item!r}")
            start = len(self.matches)
            for key, spec in item.items():
                if key not in fields:
                    raise ValueError(f"{what}[{i}]: unknown field {key!r} (known: {sorted(fields)})")
                field, kind = fields[key]
                self._match(field, kind, spec, b"", False, f"{what}[{i}].{key}")
            pending.append((start, len(self.matches) - start))
        self.clauses.extend(pending)
        return (False, first, len(pending))

    cdef int _condition(self, object cond, str what) except -1:
        if not isinstance(cond, dict) or not isinstance(cond.get("key"), str):
            raise ValueError(f"{what}: a condition is a dict with a str 'key', not {cond!r}")
        key = cond["key"]
        if key.startswith("request.headers[") and key.endswith("]"):
            name = key[len("request.headers["):len(key) - 1]
            if not name or name != name.lower() or any(
                    not (ch.isascii() and (ch.isalnum() or ch in "!#$%&'*+-.^_`|~")) for ch in name):
                raise ValueError(f"{what}.key: {key!r} needs a lowercase field name")
            return self._match(AZ_HEADER, "str", cond, name.encode(), True, what)
        if key not in _AUTHZ_CONDITION:
            raise ValueError(f"{what}.key: {key!r} is not one of "
                             f"{sorted(_AUTHZ_CONDITION) + ['request.headers[NAME]']}")
        field, kind = _AUTHZ_CONDITION[key]
        return self._match(field, kind, cond, b"", True, what)

    cdef int _rule(self, object rule, str what) except -1:
        if not isinstance(rule, dict):
            raise ValueError(f"{what}: a rule is a dict, not {rule!r}")
        unknown = set(rule) - {"from", "to", "when", "http_only"}
        if unknown:
            raise ValueError(f"{what}: unknown key(s) {sorted(unknown)}")
        if not isinstance(rule.get("http_only", False), bool):
            raise ValueError(f"{what}.http_only: a bool, not {rule['http_only']!r}")
        any_from, first_from, n_from = self._clauses(rule.get("from"), _AUTHZ_SOURCE,
                                                     f"{what}.from")
        any_to, first_to, n_to = self._clauses(rule.get("to"), _AUTHZ_OPERATION, f"{what}.to")
        when = rule.get("when") or []
        if not isinstance(when, list):
            raise ValueError(f"{what}.when: a list, not {when!r}")
        first_when = len(self.matches)
        for i, cond in enumerate(when):
            self._condition(cond, f"{what}.when[{i}]")
        # HTTP-only by the fields it names, as Istio judges it (control's mark says the
        # same but for remoteIpBlocks / remote.ip, which Istio evaluates on TCP too).
        clause_matches = [m for first, n in (self.clauses[first_from:first_from + n_from]
                                             + self.clauses[first_to:first_to + n_to])
                          for m in self.matches[first:first + n]]
        http_only = any(m[0] >= AZ_HOST for m in clause_matches + self.matches[first_when:])
        self.rules.append((any_from, first_from, n_from, any_to, first_to, n_to, first_when,
                           len(self.matches) - first_when, http_only))
        return 0

    cdef int policy(self, object policy, str what) except -1:
        if not isinstance(policy, dict):
            raise ValueError(f"{what}: a policy is a dict, not {policy!r}")
        unknown = set(policy) - {"name", "action", "rules"}
        if unknown:
            raise ValueError(f"{what}: unknown key(s) {sorted(unknown)}")
        name = policy.get("name")
        if not isinstance(name, str) or not name or len(name.encode()) > 512:
            raise ValueError(f"{what}.name: a 'namespace/name' str, not {name!r}")
        action = policy.get("action")
        if action not in _AUTHZ_ACTIONS:
            raise ValueError(f"{what}.action: one of {sorted(_AUTHZ_ACTIONS)}, not {action!r}")
        rules = policy.get("rules")
        if not isinstance(rules, list):
            raise ValueError(f"{what}.rules: a list, not {rules!r}")
        first = len(self.rules)
        for i, rule in enumerate(rules):
            self._rule(rule, f"{what}.rules[{i}]")
        self.policies.append((_AUTHZ_ACTIONS[action], *self._string(name.encode()), first,
                              len(rules)))
        return 0


cdef int _check_template(str value, str what) except -1:
    """Istio's path templates (pkg/config/security CheckValidPathTemplate): "{*}" and
    "{**}" as whole segments only, no operator after "{**}"."""
    seen_any = False
    for segment in value.split("/"):
        if segment in ("{*}", "{**}") and not seen_any:
            seen_any = segment == "{**}"
        elif "{" in segment or "}" in segment:
            raise ValueError(f"{what}: template {value!r}: '{{*}}' and '{{**}}' must be whole "
                             "segments, none after '{**}'")
    return 0


cdef int _authz_bounded(_AuthzCompiler out) except -1:
    """The program is within AUTHZ_MAX_*: else a ValueError naming the count and limit."""
    for count, what, limit, name in (
            (len(out.policies), "policies", AUTHZ_MAX_POLICIES, "AUTHZ_MAX_POLICIES"),
            (len(out.rules), "rules", AUTHZ_MAX_LEAVES, "AUTHZ_MAX_LEAVES"),
            (len(out.clauses), "sources and operations", AUTHZ_MAX_LEAVES, "AUTHZ_MAX_LEAVES"),
            (len(out.matches), "field matches", AUTHZ_MAX_LEAVES, "AUTHZ_MAX_LEAVES"),
            (len(out.leaves), "values", AUTHZ_MAX_LEAVES, "AUTHZ_MAX_LEAVES"),
            (len(out.text), "bytes of names and values", AUTHZ_MAX_TEXT_BYTES,
             "AUTHZ_MAX_TEXT_BYTES")):
        if count > limit:
            raise ValueError(f"program: {count} {what}, over the limit of {limit} ({name})")
    return 0


cdef tuple _authz_compile(object program):
    """The checked, flattened program: (policies, rules, clauses, matches, leaves, text,
    has_allow, want)."""
    cdef _AuthzCompiler out = _AuthzCompiler()
    if not isinstance(program, dict) or set(program) != {"policies"}:
        raise ValueError(f"program: a dict with 'policies' only, not {program!r}")
    if not isinstance(program["policies"], list):
        raise ValueError(f"program.policies: a list, not {program['policies']!r}")
    if len(program["policies"]) > AUTHZ_MAX_POLICIES:
        # (Refused before compiling: the other bounds are checked once compiled.)
        raise ValueError(f"program: {len(program['policies'])} policies, over the limit of "
                         f"{AUTHZ_MAX_POLICIES} (AUTHZ_MAX_POLICIES)")
    for i, policy in enumerate(program["policies"]):
        out.policy(policy, f"policies[{i}]")
    _authz_bounded(out)
    return (out.policies, out.rules, out.clauses, out.matches, out.leaves, bytes(out.text),
            any(p[0] == AUTHZ_ALLOW for p in out.policies), out.want)


def check_authz_program(program) -> None:
    """RouteTable.set_inbound_authz()'s checks of `program` alone, AUTHZ_MAX_* included:
    a ValueError names what is wrong. For the control side, to refuse a config whose
    program a worker would refuse."""
    _authz_compile(program)


cdef void* _authz_array(list items, size_t size) except? NULL:
    cdef void* p
    if not items:
        return NULL
    p = calloc(len(items), size)
    if p == NULL:
        raise MemoryError()
    return p


cdef AuthzProgram* _authz_program(tuple compiled) except NULL:
    """A C program from _authz_compile's tuple (freed by _authz_free, also when this
    fails half-way)."""
    cdef AuthzProgram* prog = <AuthzProgram*>calloc(1, sizeof(AuthzProgram))
    cdef uint32_t i
    cdef bytes addr
    if prog == NULL:
        raise MemoryError()
    policies, rules, clauses, matches, leaves, text, has_allow, want = compiled
    try:
        prog.policies = <AuthzPolicy*>_authz_array(policies, sizeof(AuthzPolicy))
        prog.rules = <AuthzRule*>_authz_array(rules, sizeof(AuthzRule))
        prog.clauses = <AuthzClause*>_authz_array(clauses, sizeof(AuthzClause))
        prog.matches = <AuthzMatch*>_authz_array(matches, sizeof(AuthzMatch))
        prog.leaves = <AuthzLeaf*>_authz_array(leaves, sizeof(AuthzLeaf))
        prog.text = <char*>malloc(len(text) + 1)
        if prog.text == NULL:
            raise MemoryError()
        memcpy(prog.text, <const char*>text, len(text))
        prog.n_policies = len(policies)
        prog.has_allow = has_allow
        prog.want = want
        for i, (action, off, length, first, n) in enumerate(policies):
            prog.policies[i].action = action
            prog.policies[i].name_off, prog.policies[i].name_len = off, length
            prog.policies[i].first_rule, prog.policies[i].n_rules = first, n
        for i, r in enumerate(rules):
            (prog.rules[i].any_from, prog.rules[i].first_from, prog.rules[i].n_from,
             prog.rules[i].any_to, prog.rules[i].first_to, prog.rules[i].n_to,
             prog.rules[i].first_when, prog.rules[i].n_when, prog.rules[i].http_only) = r
        for i, (first, n) in enumerate(clauses):
            prog.clauses[i].first_match, prog.clauses[i].n_matches = first, n
        for i, m in enumerate(matches):
            (prog.matches[i].field, prog.matches[i].name_off, prog.matches[i].name_len,
             prog.matches[i].has_values, prog.matches[i].first_value, prog.matches[i].n_values,
             prog.matches[i].first_not, prog.matches[i].n_not) = m
        for i, (kind, bits, off, length, addr, port, v6) in enumerate(leaves):
            prog.leaves[i].kind, prog.leaves[i].bits = kind, bits
            prog.leaves[i].off, prog.leaves[i].length = off, length
            memcpy(prog.leaves[i].addr, <const char*>addr, len(addr))
            prog.leaves[i].port = port
            prog.leaves[i].v6 = v6
    except BaseException:
        _authz_free(prog)
        raise
    return prog


cdef void _authz_free(AuthzProgram* prog) noexcept nogil:
    if prog == NULL:
        return
    free(prog.policies)
    free(prog.rules)
    free(prog.clauses)
    free(prog.matches)
    free(prog.leaves)
    free(prog.text)
    free(prog)


cdef int _authz_add(RouteTable table, str sni, object program) except -1:
    """RouteTable.set_inbound_authz's checks: the route exists, the program is whole."""
    sni_b = _host_name(sni, "sni")
    for i, entry in enumerate(table._routes):
        if entry[0] == sni_b:
            break
    else:
        raise ValueError(f"sni {sni!r} has no inbound route (add_inbound_route first)")
    if program is None:
        table._authz.pop(i, None)
    else:
        table._authz[i] = _authz_compile(program)
    return 0
