# Every target runs the idempotent set-up first, so a fresh checkout needs nothing else.
.PHONY: setup test test-unit lint demo bench matrix userlands chaos clean

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -ra $(PYTEST_ARGS)

# ruff (pyflakes, bugbear, isort, pyupgrade) on engine/, ebpf/, sandbox/ and bench/; mypy on engine/ and ebpf/ (pyproject.toml)
lint: setup
	.venv/bin/ruff check engine ebpf sandbox bench
	.venv/bin/mypy

test-unit: setup
	.venv/bin/python -m pytest -ra tests/unit tests/golden

demo: setup
	.venv/bin/tpctl demo

# Side-by-side benchmark of both engines against the no-redirect baselines (bench/results/).
bench: setup
	.venv/bin/python -m bench $(BENCH_ARGS)

# Debian kernels 5.10, 6.1, 6.12 and sid's 7.x in throwaway QEMU guests: engine choice + traffic suite.
matrix: setup
	.venv/bin/python -m vagrant.matrix $(MATRIX_ARGS)

# Debian 11, 12, 13 and sid userlands (debootstrap roots, cached in vagrant/.cache/userlands/), each
# set up by scripts/setup.sh and running the whole suite chrooted on this kernel.
userlands: setup
	.venv/bin/python -m vagrant.userlands $(USERLAND_ARGS)

# The crash-consistency property suite with many more examples than CI runs (tests/netns/test_chaos.py).
chaos: setup
	TPCTL_CHAOS_EXAMPLES=$${TPCTL_CHAOS_EXAMPLES:-100} TPCTL_EVERY_SIGNAL=1 .venv/bin/python -m pytest -ra tests/netns/test_chaos.py tests/netns/test_crash.py tests/netns/test_interrupts.py

clean:
	rm -rf .venv build *.egg-info
