"""Frame layouts of the request path through the broker's ROUTER socket.

Both clients and servers are DEALER sockets connected to one ROUTER, so the broker can
route by service name and answer at once when no server is there, rather than letting
the caller wait for a timeout (a restarting control process is a normal event).

    server -> broker   [READY, service]               register, repeated as heartbeat
    client -> broker   [CALL, service, envelope]
    broker -> server   [QUERY, client-id, envelope]
    server -> broker   [REPLY, client-id, envelope]
    broker -> client   [ANSWER, envelope] | [FAIL, utf-8 message, request seq]
"""

READY = b"S"
CALL = b"C"
QUERY = b"Q"
REPLY = b"R"
ANSWER = b"A"
FAIL = b"E"

# A server re-registers this often; the broker forgets one silent for EXPIRY_S.
HEARTBEAT_S = 1.0
EXPIRY_S = 3.0
