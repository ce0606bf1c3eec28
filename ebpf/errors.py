"""Typed errors of the eBPF engine."""
from __future__ import annotations


class EbpfError(Exception):
    """Base of every error raised by the ebpf package."""


class HeadersNotFound(EbpfError):
    """No kernel headers for BCC (install linux-headers-<arch> or create the build link)."""


class EbpfCompileError(EbpfError):
    """BCC could not compile bpf_src; the message carries the compiler output."""


class EbpfLoadError(EbpfError):
    """The kernel refused a program; the message carries the verifier log."""


class EbpfApplyError(EbpfError):
    """apply failed and was rolled back; rollback_notes tell what the rollback did."""

    def __init__(self, message: str, rollback_notes: list[str]):
        notes = "\n".join(f"  rollback: {n}" for n in rollback_notes)
        super().__init__(f"{message}\n{notes}" if notes else message)
        self.original = message
        self.rollback_notes = rollback_notes
