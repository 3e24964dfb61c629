"""A second host on this machine: a network namespace joined by a veth pair, which a test can cut off
silently (its side of the link goes down: packets vanish as through a dead cable, nothing is closed).

Made and removed by the test that uses it (needs root, as the tests have here and in CI).
"""

from __future__ import annotations

import os
import random
import subprocess


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Netns:
    def __init__(self) -> None:
        n = random.randrange(1, 250)
        self.name = f"sw{os.getpid() % 100000}x{n}"
        self.outer, self.inner = f"{self.name}a"[-15:], f"{self.name}b"[-15:]
        self.outer_ip, self.ip = f"10.{200 + n % 50}.{n}.1", f"10.{200 + n % 50}.{n}.2"
        self.subnet = f"10.{200 + n % 50}.{n}.0/24"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            _ip("link", "set", self.inner, "netns", self.name)
            _ip("addr", "add", f"{self.outer_ip}/24", "dev", self.outer)
            _ip("link", "set", self.outer, "up")
            for args in (("addr", "add", f"{self.ip}/24", "dev", self.inner), ("link", "set", self.inner, "up"),
                         ("link", "set", "lo", "up")):
                _ip("netns", "exec", self.name, "ip", *args)
        except BaseException:
            self.close()
            raise

    def prefix(self) -> list[str]:
        """Run a command inside: put this in front of it."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Packets to the namespace vanish from now on; no connection is told."""
        _ip("netns", "exec", self.name, "ip", "link", "set", self.inner, "down")

    def mend(self) -> None:
        _ip("netns", "exec", self.name, "ip", "link", "set", self.inner, "up")

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)
