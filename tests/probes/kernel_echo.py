#!/usr/bin/python3
"""The Linux side of the differential probes: a TCP echo server on the kernel stack.

Behaves like the engine's `--echo` service: echoes every byte as it arrives and closes its side
once the peer has closed (half-close: echo the rest, then FIN). Urgent data is kept inline
(SO_OOBINLINE, the socket option RFC 6093 advises applications that receive urgent data to
set), as the engine delivers it. Usage: kernel_echo.py ADDR PORT; prints `listening` when ready.
"""
import socket
import sys
import threading


def serve(conn):
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    addr, port = sys.argv[1], int(sys.argv[2])
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    lst.bind((addr, port))
    lst.listen(1024)
    print("listening", flush=True)
    while True:
        conn, _ = lst.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
