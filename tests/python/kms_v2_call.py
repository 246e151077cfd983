#!/usr/bin/env python3
"""Calls a KMS v2 plugin on a unix socket from Python's grpcio (grpc C-core).

Used by tests/it/grpc_clients.rs to show which client setting other gRPC stacks
need against kube-kms (docs/troubleshooting.md, "gRPC clients other than
grpc-go"): C-core sends the %-encoded socket path as `:authority` on a unix
socket, which the HTTP/2 server refuses; `grpc.default_authority=localhost`
makes it send what grpc-go sends.

No generated stubs: the few messages are serialized by hand (protobuf wire
format, proto/kms_v2.proto), and the calls go through the generic
`channel.unary_unary`.

Usage: kms_v2_call.py SOCKET [AUTHORITY]
Prints one JSON object: {"ok": true, "status": {...}, "roundtrip": true,
"health": "SERVING"} or {"ok": false, "code": "...", "details": "..."}.
Exit status 0 when every call succeeded, 1 when a call failed.
"""
import json
import sys

import grpc

SERVICE = "/v2.KeyManagementService/"
HEALTH = "/grpc.health.v1.Health/Check"


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, payload):
    """A length-delimited field (wire type 2): bytes, string or message."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def parse(data):
    """Fields of a message: {number: [value, ...]}; varints as int, the
    length-delimited ones as bytes (other wire types do not occur here)."""
    fields = {}
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 2:
            size, i = read_varint(data, i)
            value = data[i : i + size]
            if len(value) != size:
                raise ValueError("truncated field")
            i += size
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def read_varint(data, i):
    shift = result = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def text(fields, number):
    return fields.get(number, [b""])[0].decode()


def main():
    socket = sys.argv[1]
    options = []
    if len(sys.argv) > 2:
        options.append(("grpc.default_authority", sys.argv[2]))
    identity = lambda b: b  # noqa: E731 (the messages are bytes already)
    with grpc.insecure_channel("unix:" + socket, options=options) as channel:

        def call(method, request):
            stub = channel.unary_unary(
                method, request_serializer=identity, response_deserializer=identity
            )
            return parse(stub(request, timeout=10))

        try:
            status = call(SERVICE + "Status", b"")
            plaintext = b"a 32-byte DEK seed from python.."
            encrypted = call(
                SERVICE + "Encrypt",
                field(1, plaintext) + field(2, b"python-encrypt-1"),
            )
            ciphertext = encrypted[1][0]
            key_id = encrypted.get(2, [b""])[0]
            # Annotations (a map: repeated entry messages) go back unchanged,
            # as kube-apiserver does.
            annotations = b"".join(field(4, entry) for entry in encrypted.get(3, []))
            decrypted = call(
                SERVICE + "Decrypt",
                field(1, ciphertext)
                + field(2, b"python-decrypt-1")
                + field(3, key_id)
                + annotations,
            )
            health = call(HEALTH, field(1, b"v2.KeyManagementService"))
        except grpc.RpcError as error:
            print(
                json.dumps(
                    {"ok": False, "code": error.code().name, "details": error.details()}
                )
            )
            return 1
    serving = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING"}
    print(
        json.dumps(
            {
                "ok": True,
                "status": {
                    "version": text(status, 1),
                    "healthz": text(status, 2),
                    "key_id": text(status, 3),
                },
                "encrypt_key_id": key_id.decode(),
                "roundtrip": decrypted.get(1, [b""])[0] == plaintext,
                "health": serving.get(health.get(1, [0])[0], "?"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
