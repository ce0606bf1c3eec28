"""Load the catalogue's programs from a compiled BCC object, each with its expected attach type."""
from __future__ import annotations

from .catalogue import Program
from .compile import captured_stderr
from .errors import EbpfLoadError


def load_program(bpf, prog: Program):
    """Returns BCC's Function (fd, name). The verifier log is in the error on refusal."""
    attach_type = prog.attach_type if prog.attach_type is not None else -1
    with captured_stderr() as log:
        try:
            return bpf.load_func(prog.name.encode(), prog.prog_type, attach_type=attach_type)
        except Exception as exc:  # BCC raises bare Exception
            err = exc
    raise EbpfLoadError(f"kernel refused {prog.name} ({err}):\n{log[0].strip()[-4000:]}")
