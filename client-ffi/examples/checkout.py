#!/usr/bin/env python3
"""checkout.py: a Python program that uses the licensing client library (liblicensing)
through ctypes, with no package to install.

It checks out one seat of a feature, shows that a second client finds the seats used up
(NO_LICENSE_AVAILABLE), holds the lease until a line arrives on standard input (or at
once with --no-wait), and returns it.

    python3 checkout.py target/debug/liblicensing.so http://127.0.0.1:7070 \
        producer.pub.pem cad --no-wait
"""

import ctypes
import sys

OK = 0
NO_LICENSE_AVAILABLE = 114  # LICENSING_STATUS_NO_LICENSE_AVAILABLE in licensing.h


class Licensing:
    """The C functions of liblicensing, with their signatures."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        client_p, lease_p = ctypes.c_void_p, ctypes.c_void_p
        status = ctypes.c_int32
        s = ctypes.c_char_p
        lib.licensing_client_new.argtypes = [s, s, s, s, ctypes.POINTER(client_p)]
        lib.licensing_client_new.restype = status
        lib.licensing_client_free.argtypes = [client_p]
        lib.licensing_client_free.restype = None
        lib.licensing_checkout.argtypes = [client_p, s, s, ctypes.c_uint32, ctypes.POINTER(lease_p)]
        lib.licensing_checkout.restype = status
        lib.licensing_lease_id.argtypes = [lease_p]
        lib.licensing_lease_id.restype = s
        lib.licensing_lease_expires_at.argtypes = [lease_p, ctypes.POINTER(ctypes.c_int64)]
        lib.licensing_lease_expires_at.restype = status
        lib.licensing_lease_return.argtypes = [lease_p]
        lib.licensing_lease_return.restype = status
        lib.licensing_lease_free.argtypes = [lease_p]
        lib.licensing_lease_free.restype = None
        lib.licensing_last_error_message.argtypes = []
        lib.licensing_last_error_message.restype = s
        lib.licensing_status_name.argtypes = [ctypes.c_int32]
        lib.licensing_status_name.restype = s
        self.lib = lib

    def error(self, what, status):
        name = self.lib.licensing_status_name(status).decode()
        message = self.lib.licensing_last_error_message().decode()
        return RuntimeError(f"{what}: {name}: {message}")

    def client(self, servers, producer_key_pem, client_id=None):
        handle = ctypes.c_void_p()
        rc = self.lib.licensing_client_new(
            servers.encode(), producer_key_pem.encode(), None,
            client_id.encode() if client_id else None, ctypes.byref(handle))
        if rc != OK:
            raise self.error("client", rc)
        return handle

    def checkout(self, client, feature, count=1):
        """The lease handle, or the status when the server refused."""
        lease = ctypes.c_void_p()
        rc = self.lib.licensing_checkout(client, feature.encode(), None, count, ctypes.byref(lease))
        return (lease, OK) if rc == OK else (None, rc)


def main():
    if len(sys.argv) < 5:
        print(f"usage: {sys.argv[0]} LIBRARY SERVERS PRODUCER_KEY_PEM FEATURE [--no-wait]",
              file=sys.stderr)
        return 2
    library, servers, key_path, feature = sys.argv[1:5]
    wait = "--no-wait" not in sys.argv[5:]
    lic = Licensing(library)
    with open(key_path) as f:
        producer_key = f.read()

    client = lic.client(servers, producer_key)
    lease, rc = lic.checkout(client, feature)
    if rc != OK:
        raise lic.error(f"checkout of {feature}", rc)
    until = ctypes.c_int64()
    lic.lib.licensing_lease_expires_at(lease, ctypes.byref(until))
    lease_id = lic.lib.licensing_lease_id(lease).decode()
    print(f"checked out {feature}: lease {lease_id} until {until.value}", flush=True)

    other = lic.client(servers, producer_key, client_id="checkout-py-other")
    refused, rc = lic.checkout(other, feature)
    name = lic.lib.licensing_status_name(rc).decode()
    message = lic.lib.licensing_last_error_message().decode()
    print(f"second client, {feature}: {name} ({message})", flush=True)
    lic.lib.licensing_client_free(other)
    if rc != NO_LICENSE_AVAILABLE or refused is not None:
        return 1

    if wait:
        print("holding", flush=True)
        sys.stdin.readline()

    rc = lic.lib.licensing_lease_return(lease)
    if rc != OK:
        raise lic.error("return", rc)
    print(f"returned {lease_id}", flush=True)
    lic.lib.licensing_lease_free(lease)
    lic.lib.licensing_client_free(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
