# Every target runs the idempotent set-up first, so a fresh checkout needs nothing else.
.PHONY: setup test test-unit lint demo bench matrix reboot userlands chaos clean

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

# Debian kernels 5.10, 6.1, 6.12 and sid's 7.x in throwaway QEMU guests: engine choice + traffic suite;
# then the reboot test below (REBOOT=0 skips it). Exit status: the matrix's, else the reboot test's.
matrix: setup
	@status=0; .venv/bin/python -m vagrant.matrix $(MATRIX_ARGS) || status=$$?; \
	if [ "$(REBOOT)" != 0 ] && [ $$status -ne 130 ]; then \
	  .venv/bin/python -m vagrant.reboot $(REBOOT_ARGS); rc=$$?; [ $$status -ne 0 ] || status=$$rc; \
	fi; exit $$status

# tpctl install --persist across two real reboots, iptables and eBPF, each in a QEMU guest that boots a
# debootstrapped Debian root from its own disk with systemd as PID 1 (vagrant/reboot.py, reboot.yaml).
reboot: setup
	.venv/bin/python -m vagrant.reboot $(REBOOT_ARGS)

# Debian 11, 12, 13 and sid userlands (debootstrap roots, cached in vagrant/.cache/userlands/), each
# set up by scripts/setup.sh and running the whole suite chrooted on this kernel.
userlands: setup
	.venv/bin/python -m vagrant.userlands $(USERLAND_ARGS)

# The crash-consistency property suite with many more examples than CI runs (tests/netns/test_chaos.py).
chaos: setup
	TPCTL_CHAOS_EXAMPLES=$${TPCTL_CHAOS_EXAMPLES:-100} TPCTL_EVERY_SIGNAL=1 .venv/bin/python -m pytest -ra tests/netns/test_chaos.py tests/netns/test_crash.py tests/netns/test_interrupts.py

clean:
	rm -rf .venv build *.egg-info
