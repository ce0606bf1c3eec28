"""Hostile readers, a persisted install that must boot, SIGHUP, and persistence that belongs to
the install that made it (issue 22 items 3-5, issue 23 items 3 and 4).

The readers: --config and --resolv-conf take regular files (and `-` for --config) up to a size,
YAML without aliases and nested a few levels; a FIFO, a device or a directory is answered at
once with exit 2 naming the flag; resolv.conf is read only when DNS redirection needs it. The
unit that --persist writes boots (the file holds the proxy's uid, not a name that may not exist
there); only the uninstall of the state dir that persisted it removes it, and an install's crash
recovery never does. SIGHUP rolls back like SIGTERM, and a retry's pause does not hold a signal
back. The privileged cases share one sandbox.
"""
from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from engine import config as config_module
from engine import persist, timeouts
from engine.apply import PASSTHROUGH_STEP
from engine.errors import ConfigError
from sandbox.netns import SRV_V4
from tests.netns.conftest import engine_flags, install_args
from tests.netns.host_view import host_view

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# nine anchors of nine aliases each under a real key: 9**9 ports once expanded, in about 400 bytes
ALIAS_BOMB = "redirect:\n  outbound:\n    excludePorts: [" + ", ".join(
    f"&{name} [{', '.join([f'*{inner}' if inner else '1'] * 9)}]"
    for inner, name in zip(["", *"abcdefgh"], "abcdefghi")) + "]\n"
AT_ONCE = 10  # seconds: a reader that blocks or expands is killed, and the case fails


def tpctl_cli(args: list[str], tmp_path, stdin=None) -> subprocess.CompletedProcess:
    """tpctl as a command, its state and persistence under tmp_path: bad input is refused before
    anything is probed, needs root or changes."""
    env = {**os.environ, "TPCTL_STATE_DIR": str(tmp_path / "state"), persist.ROOT_ENV: str(tmp_path / "root")}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, env=env,
                          cwd=CHECKOUT, timeout=AT_ONCE, stdin=stdin if stdin is not None else subprocess.DEVNULL)


def refused(result: subprocess.CompletedProcess, flag: str) -> str:
    said = result.stdout + result.stderr
    assert result.returncode == 2 and flag in result.stderr and "Traceback" not in said, said[-600:]
    return result.stderr


def test_config_files_are_bounded_in_size_aliases_depth_and_kind(tmp_path):
    bomb, deep, big, latin1, fifo = (tmp_path / n for n in ("bomb.yaml", "deep.yaml", "big.yaml", "l1.yaml", "fifo"))
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 500
    deep.write_text("kumaDPUser: " + "[" * 10_000 + "]" * 10_000 + "\n")
    big.write_text("verbose: true\n" + "#" * config_module.CONFIG_LIMIT + "\n")
    latin1.write_bytes(b"kumaDPUser: \xe9\n")
    os.mkfifo(fifo)
    cases = {str(bomb): "aliases", str(deep): "nested more than", str(big): "larger than", str(latin1): "not UTF-8",
             str(fifo): "a FIFO", "/dev/zero": "a character device", str(tmp_path): "a directory"}
    for path, reason in cases.items():
        started = time.monotonic()
        said = refused(tpctl_cli(["install", "--dry-run", "--config", path], tmp_path), f"--config {path}")
        assert reason in said and time.monotonic() - started < AT_ONCE, said
    with open("/dev/zero", "rb") as zeros:  # stdin is bounded too
        assert "larger than" in refused(tpctl_cli(["install", "--config", "-"], tmp_path, zeros),
                                        "--config -")
    assert not os.path.lexists(tmp_path / "state") and not os.path.lexists(tmp_path / "root")


def test_a_bad_timeout_scale_is_bad_input_not_a_traceback(tmp_path, monkeypatch):
    for text in ("abc", "nan", "-1", "0", "1e9"):
        monkeypatch.setenv(timeouts.SCALE_ENV, text)
        with pytest.raises(ConfigError, match=f"{timeouts.SCALE_ENV}=.*fix: "):
            timeouts.bound(1)
    monkeypatch.setenv(timeouts.SCALE_ENV, "8")
    assert timeouts.bound(2) == 16


def test_a_large_config_still_loads_fast(tmp_path):
    path = tmp_path / "many.yaml"
    ips = [f"      - 198.18.{i // 256}.{i % 256}/32" for i in range(10_000)]
    path.write_text("redirect:\n  outbound:\n    excludePortsForIPs:\n" + "\n".join(ips) + "\n")
    started = time.monotonic()
    assert len(config_module.read_config_file(str(path))["exclude_outbound_ips"]) == 10_000
    assert time.monotonic() - started < 2


def test_a_retry_pause_ends_at_a_signal_and_sighup_rolls_back(tmp_path):
    """A retry loop inside a step (kumactl's --max-retries, --sleep-between-retries) that would
    pause 30 s a hundred times: SIGHUP and SIGTERM end it at once, the done step is undone and
    the process exits 128 + the signal."""
    program = ("import sys\n"
               "from engine.contract import retrying\n"
               "from engine.transaction import transaction\n"
               "def fail():\n"
               "    print('attempt', flush=True)\n"
               "    raise OSError('busy')\n"
               "with transaction() as tx:\n"
               "    tx.step('made', lambda: None, lambda _r: print('undone', flush=True))\n"
               "    tx.step('apply', lambda: retrying(fail, 100, 30, (OSError,)))\n")
    children = {}
    for sig in (signal.SIGHUP, signal.SIGTERM):
        children[sig] = subprocess.Popen([sys.executable, "-c", program], cwd=CHECKOUT, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for sig, child in children.items():
        assert child.stdout is not None and child.stdout.readline() == "attempt\n"
        time.sleep(0.3)  # inside the pause
        child.send_signal(sig)
    for sig, child in children.items():
        try:
            out, err = child.communicate(timeout=AT_ONCE)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 128 + sig and out == "undone\n", (sig, child.returncode, out, err[-400:])


def persisted(sandbox) -> persist.Paths:
    """Where --persist writes in this sandbox (under its own root, never the host's /etc)."""
    under = [os.path.join(sandbox.persist_root, p.lstrip("/")) for p in (persist.CONFIG, persist.UNIT, persist.WANTS)]
    return persist.Paths(*under, systemd=False, state_dir=os.path.realpath(sandbox.state_dir))


def run_unit(sandbox, key: str) -> subprocess.CompletedProcess:
    """The unit's own ExecStart or ExecStop, as systemd runs it (its argv, no shell)."""
    with open(persisted(sandbox).unit, encoding="utf-8") as handle:
        line = next(line for line in handle if line.startswith(f"{key}="))
    return sandbox.run(sandbox.app, shlex.split(line.split("=", 1)[1]), timeout=180,
                       env={**os.environ, "TPCTL_STATE_DIR": sandbox.state_dir, persist.ROOT_ENV: sandbox.persist_root})


def redirected(scene) -> bool:
    before = len(scene.connections("outbound"))
    assert scene.outbound(SRV_V4, 9000)["reply"].startswith(f"hello from {SRV_V4}:9000")
    return len(scene.connections("outbound")) > before


def test_hostile_readers_sighup_and_a_persisted_install_that_boots_and_is_its_own(scene, sandbox, tmp_path):
    try:
        pwd.getpwnam("kuma-dp")
        pytest.skip("this host has a kuma-dp user: the default-user case needs a host without one")
    except KeyError:
        pass
    fresh = str(tmp_path / "fresh-state")
    fifo = tmp_path / "resolv.fifo"
    os.mkfifo(fifo)
    nft = engine_flags("nftables", sandbox)
    ebpf = ["install", "--kuma-dp-user", "5678", *engine_flags("ebpf", sandbox)]  # mounts the sandbox's bpffs

    # resolv.conf: not read without DNS redirection; with it, only a regular file (exit 2 at once)
    plain = sandbox.tpctl("install", "--dry-run", "--resolv-conf", str(fifo), *nft, timeout=AT_ONCE)
    assert plain.returncode == 0, plain.stderr
    for path in (str(fifo), "/dev/zero", str(tmp_path)):
        said = refused(sandbox.tpctl("install", "--redirect-dns", "--resolv-conf", path, *nft, timeout=AT_ONCE,
                                     env={"TPCTL_STATE_DIR": fresh}), f"--resolv-conf {path}")
        assert "not a regular file" in said and not os.path.lexists(fresh), said

    # SIGHUP inside the last step: everything rolled back, exit 129
    before = host_view(sandbox)
    hup = sandbox.tpctl(*install_args("nftables", sandbox),
                        env={"TPCTL_SIGNAL_IN_STEP": "record the install in the state file:HUP"})
    assert hup.returncode == 129 and "rolled back" in hup.stderr and "SIGHUP" in hup.stderr, hup.stderr
    assert host_view(sandbox) == before

    # --persist refuses program source others could change (here: under the world-writable /tmp)
    source = os.path.join(sandbox.tmp, "src")
    os.mkdir(source)
    said = refused(sandbox.tpctl(*ebpf, "--persist", "--ebpf-programs-source-path", source),
                   f"--ebpf-programs-source-path {source}")
    assert "root would run or compile it at every boot" in said
    assert not os.path.lexists(sandbox.persist_root) and host_view(sandbox) == before

    # the default proxy user, on a host with no kuma-dp user: the file holds the uid
    args = ["install", "--resolv-conf", sandbox.resolv_conf, "--max-retries", "0", *nft]
    made = sandbox.tpctl(*args, "--persist")
    assert made.returncode == 0, made.stderr
    paths = persisted(sandbox)
    with open(paths.config, encoding="utf-8") as handle:
        assert yaml.safe_load(handle)["kumaDPUser"] == "5678"

    # another state dir's uninstall keeps this install's persistence
    other = sandbox.tpctl("uninstall", "--state-dir", fresh)
    assert other.returncode == 0 and os.path.exists(paths.unit) and os.path.exists(paths.config), other.stderr

    # shutdown (the unit's ExecStop), then a boot: fresh state, the unit's own ExecStart
    assert run_unit(sandbox, "ExecStop").returncode == 0
    down = sandbox.tpctl("status")
    assert "persistent: yes" in down.stdout and "journalctl -u tpctl.service" in down.stdout, down.stdout
    shutil.rmtree(sandbox.state_dir, ignore_errors=True)  # /run is empty at boot
    with open(paths.config, encoding="utf-8") as handle:
        good = handle.read()
    with open(paths.config, "w", encoding="utf-8") as handle:  # a boot that fails: the unit fails, saying why
        handle.write(f"{persist.MARK}\nkumaDPUser: no-such-user-tpctl\n")
    failed = run_unit(sandbox, "ExecStart")
    assert failed.returncode == 2 and "kumaDPUser" in failed.stderr and "Traceback" not in failed.stderr
    assert "journalctl -u tpctl.service" in sandbox.tpctl("status").stdout
    with open(paths.config, "w", encoding="utf-8") as handle:
        handle.write(good)
    booted = run_unit(sandbox, "ExecStart")
    assert booted.returncode == 0, booted.stderr
    assert redirected(scene)

    # an install that crashed (SIGKILL), then the install that recovers from it: persistence stays
    other_config = [*args, "--exclude-outbound-ports", "7001"]
    killed = sandbox.tpctl(*other_config, env={"TPCTL_SIGNAL_IN_STEP": f"{PASSTHROUGH_STEP}:KILL"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    recovered = sandbox.tpctl(*other_config)
    assert recovered.returncode == 0 and "stopped at step" in recovered.stderr, recovered.stderr
    assert persist.status(paths)["persistent"] and redirected(scene)

    # the uninstall of the state dir that persisted it removes it
    assert sandbox.tpctl("uninstall").returncode == 0
    assert not any(os.path.lexists(p) for p in (paths.config, paths.unit, paths.wants))
