"""The `nft` tool: the only place the nftables engine touches the kernel.

Why the tool and not libnftables' Python binding (python3-nftables): the binding is a distro
package for the system Python only (as BCC is), absent from the userlands' venvs unless
installed on purpose, while the tool ships with every distro's nftables package, reads the
very script `--dry-run` prints, and costs one process per install (a few milliseconds).
`nft -f` sends the whole file as one netlink batch: the kernel commits it at once or not at all.
`nft --check` sends the same batch and has the kernel abort it: a real feature probe.

Every command goes in as a script on stdin (`nft -f /dev/stdin`), never as argv words: nft joins
its argv and parses the result, so a name holding `;` would be a second command. A table or
chain name reaches a script only once it matches NAME_RE.
"""
from __future__ import annotations

import re
import shutil
import subprocess

from engine.timeouts import bound

from .ruleset import FAMILY, TABLE, replacing


class NftError(RuntimeError):
    pass


NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")  # a subset of nft's identifiers: no quoting needed
FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})


def valid_name(name: object) -> bool:
    """Whether name (a table or chain name from a record, say) is one tpctl would ever write."""
    return isinstance(name, str) and NAME_RE.match(name) is not None


def command(*words: str) -> str:
    """One nft command line for a script, from a verb and names that pass the grammar."""
    *verb, family, name = words
    if family not in FAMILIES or not valid_name(name) or not all(valid_name(w) for w in verb):
        raise NftError(f"refusing an nft command with a name outside tpctl's grammar: {' '.join(map(repr, words))}")
    return " ".join(words) + "\n"


def run_script(script: str) -> subprocess.CompletedProcess:
    """`nft -f /dev/stdin` with script: the one way tpctl's commands reach nft."""
    return _run(["-f", "/dev/stdin"], script)


def tool() -> str | None:
    return shutil.which("nft")


def _run(args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    command = [tool() or "nft", *args]
    try:
        return subprocess.run(command, input=script, capture_output=True, text=True, timeout=bound(60))
    except FileNotFoundError:
        raise NftError("nft is not installed (install the nftables package)") from None
    except subprocess.TimeoutExpired:
        raise NftError(f"{' '.join(command)} did not finish in {bound(60):.0f} s") from None


def version() -> str:
    result = _run(["--version"])
    return result.stdout.strip() or result.stderr.strip()


def check(script: str) -> str | None:
    """None when the kernel would take `script`, else nft's complaint."""
    result = _run(["--check", "-f", "/dev/stdin"], script)
    return None if result.returncode == 0 else (result.stderr.strip() or f"nft exited {result.returncode}")


def apply(script: str) -> None:
    result = run_script(script)
    if result.returncode != 0:
        raise NftError(f"nft -f failed: {result.stderr.strip()}\ninput was:\n{script}")


def listing() -> str | None:
    """`nft list table inet tpctl`, None when there is no such table (or no nf_tables at all)."""
    if tool() is None:
        return None
    result = run_script(command("list", "table", *TABLE.split()))
    if result.returncode == 0:
        return result.stdout
    if "No such file or directory" in result.stderr or "Protocol not supported" in result.stderr:
        return None
    raise NftError(f"nft list table {TABLE} failed: {result.stderr.strip()}")


def exists() -> bool:
    """Whether our table is there, from `nft list tables` (no set element is read: a listing of
    20,000 elements costs 0.08 s, and uninstall, leftovers and every other engine's install ask)."""
    if tool() is None:
        return False
    result = run_script(f"list tables {FAMILY}\n")
    if result.returncode != 0:
        if "Protocol not supported" in result.stderr:
            return False
        raise NftError(f"nft list tables {FAMILY} failed: {result.stderr.strip()}")
    return f"table {TABLE}" in (line.strip() for line in result.stdout.splitlines())


def restore(saved: str | None) -> None:
    """Back to a listing taken before (ours), or to no table when there was none."""
    if saved:
        apply(replacing(saved))
    else:
        delete()


def delete() -> bool:
    """Delete our table if it exists; whether it did. Nothing else is touched."""
    if not exists():
        return False
    result = run_script(command("delete", "table", *TABLE.split()))
    if result.returncode != 0:
        raise NftError(f"nft delete table {TABLE} failed: {result.stderr.strip()}")
    return True
