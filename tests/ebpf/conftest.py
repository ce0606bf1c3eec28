"""pytest fixtures for tests/ebpf; the helpers live in ebpf_lab.py (a unique module name, so
they never clash with other test folders' conftest modules)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ebpf_lab import sandbox, scene  # noqa: E402,F401  (fixtures)
