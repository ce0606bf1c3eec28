"""The one place that declares ctypes bindings to libbpf/libbcc.

BCC's Python wires only what its tracing tools need. Pins, queries, program info and raw map
access come from libbpf, which libbcc links and exports through its own handle. We open a
separate handle so our argtypes never change those BCC itself uses. Every wrapper raises
OSError(errno) on failure, whichever error convention (libbpf <1.0: -1 + errno; >=1.0: -errno)
the installed libbpf follows.
"""
from __future__ import annotations

import ctypes as ct
import errno as errno_mod
import os
import platform
from functools import lru_cache

BPF_F_ALLOW_MULTI = 2
BPF_ANY = 0


@lru_cache(maxsize=1)
def _lib() -> ct.CDLL:
    lib = ct.CDLL("libbcc.so.0", use_errno=True)
    sigs = {
        "bpf_obj_pin": (ct.c_int, [ct.c_int, ct.c_char_p]),
        "bpf_obj_get": (ct.c_int, [ct.c_char_p]),
        "bpf_prog_attach": (ct.c_int, [ct.c_int, ct.c_int, ct.c_int, ct.c_uint]),
        "bpf_prog_detach2": (ct.c_int, [ct.c_int, ct.c_int, ct.c_int]),
        "bpf_prog_query": (ct.c_int, [ct.c_int, ct.c_int, ct.c_uint32,
                                      ct.POINTER(ct.c_uint32), ct.POINTER(ct.c_uint32),
                                      ct.POINTER(ct.c_uint32)]),
        "bpf_obj_get_info_by_fd": (ct.c_int, [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]),
        "bpf_map_lookup_elem": (ct.c_int, [ct.c_int, ct.c_void_p, ct.c_void_p]),
        "bpf_map_update_elem": (ct.c_int, [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]),
        "bpf_map_get_next_key": (ct.c_int, [ct.c_int, ct.c_void_p, ct.c_void_p]),
        "bpf_map_delete_elem": (ct.c_int, [ct.c_int, ct.c_void_p]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def available() -> bool:
    try:
        _lib()
    except (OSError, AttributeError):
        return False
    return True


def _check(ret: int, what: str) -> int:
    if ret >= 0:
        return ret
    err = -ret if ret != -1 else (ct.get_errno() or errno_mod.EIO)
    raise OSError(err, f"{what}: {os.strerror(err)}")


def obj_pin(fd: int, path: str) -> None:
    _check(_lib().bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin {path}")


def obj_get(path: str) -> int:
    return _check(_lib().bpf_obj_get(path.encode()), f"bpf_obj_get {path}")


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int) -> None:
    _check(_lib().bpf_prog_attach(prog_fd, target_fd, attach_type, flags),
           f"bpf_prog_attach type {attach_type}")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    _check(_lib().bpf_prog_detach2(prog_fd, target_fd, attach_type),
           f"bpf_prog_detach type {attach_type}")


def prog_query(target_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to target_fd (a cgroup) for attach_type."""
    ids = (ct.c_uint32 * 64)()
    cnt = ct.c_uint32(64)
    flags = ct.c_uint32(0)
    _check(_lib().bpf_prog_query(target_fd, attach_type, 0, ct.byref(flags), ids,
                                 ct.byref(cnt)), f"bpf_prog_query type {attach_type}")
    return list(ids[: cnt.value])


class _ProgInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
                ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32),
                ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64), ("name", ct.c_char * 16)]


def prog_info(fd: int) -> dict:
    info = _ProgInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "prog info")
    return {"id": info.id, "type": info.type, "name": info.name.decode(errors="replace")}


class _MapInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
                ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
                ("name", ct.c_char * 16), ("pad", ct.c_uint8 * 64)]


def map_info(fd: int) -> dict:
    info = _MapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "map info")
    return {"type": info.type, "id": info.id, "key_size": info.key_size, "value_size": info.value_size,
            "max_entries": info.max_entries, "map_flags": info.map_flags}


def _found(ret: int, what: str) -> bool:
    """A map call's result: False for ENOENT (no such key, or no next key), else raise."""
    if ret < 0:
        err = -ret if ret != -1 else ct.get_errno()
        if err == errno_mod.ENOENT:
            return False
        _check(ret, what)
    return True


def map_lookup(fd: int, key: ct.Structure | ct._SimpleCData, value) -> bool:
    return _found(_lib().bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(value)), "bpf_map_lookup_elem")


def map_update(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _check(_lib().bpf_map_update_elem(fd, ct.byref(key), ct.byref(value), flags),
           "bpf_map_update_elem")


def map_delete(fd: int, key) -> bool:
    """False when the key was not there (a reconfiguration's undo may meet either)."""
    return _found(_lib().bpf_map_delete_elem(fd, ct.byref(key)), "bpf_map_delete_elem")


def map_next_key(fd: int, key, next_key) -> bool:
    """Fills next_key with the key after key (None: the first key); False at the end."""
    return _found(_lib().bpf_map_get_next_key(fd, ct.byref(key) if key is not None else None, ct.byref(next_key)),
                  "bpf_map_get_next_key")


# --- raw BPF_PROG_LOAD, for feature probes that must not depend on BCC or headers ---

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_BPF_PROG_LOAD = 5


class _ProgLoadAttr(ct.Structure):
    _fields_ = [("prog_type", ct.c_uint32), ("insn_cnt", ct.c_uint32), ("insns", ct.c_uint64),
                ("license", ct.c_uint64), ("log_level", ct.c_uint32), ("log_size", ct.c_uint32),
                ("log_buf", ct.c_uint64), ("kern_version", ct.c_uint32),
                ("prog_flags", ct.c_uint32), ("prog_name", ct.c_char * 16),
                ("prog_ifindex", ct.c_uint32), ("expected_attach_type", ct.c_uint32),
                ("pad", ct.c_uint8 * 64)]


def _prog_load(attr: _ProgLoadAttr) -> int:
    """BPF_PROG_LOAD through the raw syscall; returns the fd, or -errno."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        return -errno_mod.ENOSYS
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    fd = libc.syscall(ct.c_long(nr), ct.c_int(_BPF_PROG_LOAD), ct.byref(attr),
                      ct.c_uint(ct.sizeof(attr)))
    if fd < 0 and ct.get_errno() == errno_mod.EPERM and _raise_memlock():
        fd = libc.syscall(ct.c_long(nr), ct.c_int(_BPF_PROG_LOAD), ct.byref(attr),
                          ct.c_uint(ct.sizeof(attr)))
    return int(fd) if fd >= 0 else -ct.get_errno()


def _raise_memlock() -> bool:
    """Before 5.11 the kernel charges BPF objects to the user's locked memory against the loading
    process's RLIMIT_MEMLOCK (64 KiB by default there): with other BPF users on the host a load
    fails with EPERM. Raise it as BCC and libbpf do; whether there was anything to raise."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        return False
    return True


_BPF_PROG_ATTACH = 8
BPF_F_REPLACE = 4


class _ProgAttachAttr(ct.Structure):
    _fields_ = [("target_fd", ct.c_uint32), ("attach_bpf_fd", ct.c_uint32), ("attach_type", ct.c_uint32),
                ("attach_flags", ct.c_uint32), ("replace_bpf_fd", ct.c_uint32), ("pad", ct.c_uint8 * 64)]


def prog_attach_replacing(prog_fd: int, target_fd: int, attach_type: int, old_fd: int) -> None:
    """Attach prog in the place of old on a cgroup in one BPF_PROG_ATTACH (BPF_F_REPLACE,
    Linux 5.6+): no instant with neither. libbcc's bpf_prog_attach has no replace fd."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno_mod.ENOSYS, "BPF_PROG_ATTACH: unknown syscall number on this architecture")
    attr = _ProgAttachAttr(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type,
                           attach_flags=BPF_F_ALLOW_MULTI | BPF_F_REPLACE, replace_bpf_fd=old_fd)
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    if libc.syscall(ct.c_long(nr), ct.c_int(_BPF_PROG_ATTACH), ct.byref(attr), ct.c_uint(ct.sizeof(attr))) < 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_PROG_ATTACH (replace) type {attach_type}: {os.strerror(err)}")


def probe_prog_load(prog_type: int, expected_attach_type: int = 0) -> int:
    """Load "r0 = 1; exit" as prog_type; returns 0 when the kernel accepts it, else errno."""
    # BPF_MOV64_IMM(R0, 1) = 0xb7, dst 0, imm 1; BPF_EXIT_INSN = 0x95
    insns = (ct.c_uint64 * 2)(0x00000001_000000b7, 0x95)
    lic = ct.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=2, insns=ct.addressof(insns),
                         license=ct.addressof(lic), expected_attach_type=expected_attach_type)
    attr.prog_name = b"tp_probe"
    fd = _prog_load(attr)
    if fd < 0:
        return -fd
    os.close(fd)
    return 0


_LOG_SIZE = 1 << 20  # what BCC itself gives the verifier log on a refusal


def prog_load(prog_type: int, insns: int, size: int, license: bytes, expected_attach_type: int,
              name: str) -> int:
    """Load `size` bytes of instructions at address `insns` (BCC's compiled code, map fds
    already in it) with an expected attach type, which BCC before 0.19 cannot pass to the
    kernel. Returns the fd; raises OSError whose text is the verifier's log."""
    lic = ct.create_string_buffer(license)
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=size // 8, insns=insns,
                         license=ct.addressof(lic), expected_attach_type=expected_attach_type)
    # the kernel accepts [A-Za-z0-9_.] and 15 characters, as BCC truncates them
    attr.prog_name = name[:15].encode()
    fd = _prog_load(attr)
    if fd >= 0:
        return fd
    log = ct.create_string_buffer(_LOG_SIZE)
    attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ct.addressof(log)
    fd = _prog_load(attr)
    if fd >= 0:  # refused only without a log buffer: never seen, but the fd is good
        return fd
    raise OSError(-fd, f"{os.strerror(-fd)}\n{log.value.decode(errors='replace')}")


def prog_fd_by_id(prog_id: int) -> int:
    lib = _lib()
    fn = lib.bpf_prog_get_fd_by_id
    fn.restype, fn.argtypes = ct.c_int, [ct.c_uint32]
    return _check(fn(prog_id), f"bpf_prog_get_fd_by_id {prog_id}")
