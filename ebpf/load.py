"""Load the catalogue's programs from a compiled BCC object, each with its expected attach type."""
from __future__ import annotations

import inspect
from functools import lru_cache

from . import libbpf
from .catalogue import Program
from .compile import captured_stderr
from .errors import EbpfLoadError


def load_program(bpf, prog: Program):
    """Returns BCC's Function (fd, name). The verifier log is in the error on refusal."""
    name = prog.name.encode()
    if name in bpf.funcs:  # loaded by the feature check: the kernel verified it already
        return bpf.funcs[name]
    if prog.attach_type is not None and not _bcc_passes_attach_type():
        return _load_with_attach_type(bpf, prog)
    attach_type = prog.attach_type if prog.attach_type is not None else -1
    kwargs = {"attach_type": attach_type} if _bcc_passes_attach_type() else {}
    with captured_stderr() as log:
        try:
            return bpf.load_func(name, prog.prog_type, **kwargs)
        except Exception as exc:  # BCC raises bare Exception
            err = exc
    raise EbpfLoadError(f"kernel refused {prog.name} ({err}):\n{log[0].strip()[-4000:]}")


@lru_cache(maxsize=1)
def _bcc_passes_attach_type() -> bool:
    """BCC 0.19+ takes load_func(..., attach_type=); 0.18 (Debian 11) loads without one, which
    the kernel refuses for sock_addr and sockopt programs."""
    from bcc import BPF

    return "attach_type" in inspect.signature(BPF.load_func).parameters


def _load_with_attach_type(bpf, prog: Program):
    """What load_func does, through our own BPF_PROG_LOAD: BCC's compiled instructions, loaded
    with the expected attach type, registered in the object so cleanup() closes the fd."""
    from bcc import lib

    name = prog.name.encode()
    start, size = lib.bpf_function_start(bpf.module, name), lib.bpf_function_size(bpf.module, name)
    if not start:
        raise EbpfLoadError(f"compiled object has no program {prog.name}")
    try:
        fd = libbpf.prog_load(prog.prog_type, start, size, lib.bpf_module_license(bpf.module),
                              prog.attach_type or 0, prog.name)
    except OSError as err:
        log = (err.strerror or str(err)).splitlines() or [""]
        raise EbpfLoadError(f"kernel refused {prog.name} ({log[0]}):\n" + "\n".join(log[1:])[-4000:]) from err
    fn = type(bpf).Function(bpf, name, fd)
    bpf.funcs[name] = fn
    return fn
