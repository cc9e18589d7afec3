"""Process trees for tests that stop "nodes": torchrun starts every rank in a session of its own, so killing the
agent's process group leaves the ranks running as orphans. A node is a process and all its descendants. No torch."""

from __future__ import annotations

import os


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (a snapshot of the parent links in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_node(root: int, signum: int) -> None:
    """``signum`` to ``root`` and every process below it (a snapshot first: orphans are re-parented)."""
    for pid in [root, *descendants(root)]:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
