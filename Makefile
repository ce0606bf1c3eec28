# Every target runs the idempotent set-up first, so a fresh checkout needs nothing else.
.PHONY: setup test test-unit demo bench clean

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -ra $(PYTEST_ARGS)

test-unit: setup
	.venv/bin/python -m pytest -ra tests/unit tests/golden

demo: setup
	.venv/bin/tpctl demo

clean:
	rm -rf .venv build *.egg-info
