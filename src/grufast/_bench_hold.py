"""ONNX Runtime held to AVX2 on a CPU with AVX-512, for ``python -m grufast bench --emulate
avx2`` (and ``tools/load_test.py --emulate avx2``).

MLAS, ONNX Runtime's kernels, picks its AVX-512 kernels where CPUID reports AVX512F *and*
XCR0, which the instruction ``xgetbv`` reads, says that the operating system saves the
AVX-512 registers (bits 5-7), the test every library makes. On a machine whose operating
system does not enable AVX-512 (a kernel booted with ``clearcpuid=avx512f``, a hypervisor
that masks it) those bits are clear, and MLAS runs its FMA3 (AVX2) kernels, as on an
AVX2-only CPU. ONNX Runtime has no setting for this, so the workers get a copy of the
installed package in which each ``xgetbv`` of its native libraries is replaced by
``lea eax, [rcx + 7]`` (three bytes for three). Every site reads XCR0, so ecx is 0 there
(checked, below): eax becomes exactly 7, x87, SSE and AVX state, and every AVX-512 or AMX
test fails. edx keeps what it held (XCR0's bits 32-63 name no state any library tests
today). No stack or memory is touched: a push would clobber the red zone these functions
use. The installed package is never modified.

What this does not change: CPUID, so int8 paths still see AVX-VNNI where the CPU has it
(the float32 GRU the bench times uses none).

The sites are found with ``objdump`` (GNU binutils), which decodes the instructions: the
three bytes of ``xgetbv`` also occur inside other instructions (15 times in ONNX Runtime
1.32's extension, 4 of them instructions). The hold is refused (HoldError, and the bench
then records ONNX Runtime as not held, with why) without objdump, on a CPU without AVX or
AVX-512, where a site's bytes are not ``xgetbv``, where ecx cannot be shown to be 0 at a
site, or where the extension Python loads has no site.

Checked (``tools/ort_hold_check.py``): a 1024^3 MatMul in the held copy runs at OpenBLAS's
Haswell rate, 0.54x the unheld one's, on a CPU whose 512-bit units are full width (Zen 5).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

XGETBV = b"\x0f\x01\xd0"
XCR0_AVX_ONLY = b"\x8d\x41\x07"  # lea eax, [rcx + 7]: 7 = x87 | SSE | AVX state, ecx = 0
EXTENSION = "onnxruntime_pybind11_state"  # the library Python loads (capi/)
LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")


class HoldError(Exception):
    """ONNX Runtime cannot be held here; the message says why."""


def _objdump(*args: str) -> subprocess.Popen:
    """objdump with ``args``, its listing read line by line from ``stdout`` (the whole
    listing of ONNX Runtime's extension is ~250 MB of text)."""
    exe = shutil.which("objdump")
    if exe is None:
        raise HoldError("objdump (GNU binutils) is not installed: it finds MLAS's xgetbv")
    return subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "LC_ALL": "C"})


def _finish(proc: subprocess.Popen, what: str) -> None:
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise HoldError(f"objdump failed on {what}: {err.strip()[:200]}")


def _code_sections(path: str) -> list[tuple[int, int, int]]:
    """(address, size, file offset) of each code section of an ELF file."""
    proc = _objdump("-h", path)
    out = proc.stdout.read()
    _finish(proc, path)
    # objdump -h: "Idx Name Size VMA LMA File-off Algn", then the flags on the next line.
    rows = re.finditer(r"^\s*\d+\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)"
                       r"\s+\S+\s*\n\s*([^\n]*)", out, re.M)
    return [(int(m.group(2), 16), int(m.group(1), 16), int(m.group(3), 16))
            for m in rows if "CODE" in m.group(4)]


# Registers an instruction writes without naming them, by the family's 64-bit name less
# "r" ("cx" is rcx, ecx, cx, cl): a call may clobber every caller-saved register.
IMPLICIT_WRITES = {
    "cpuid": {"ax", "bx", "cx", "dx"}, "rdtscp": {"ax", "cx", "dx"},
    "syscall": {"ax", "cx", "11"}, "rep": {"cx", "si", "di"}, "loop": {"cx"},
    "call": {"ax", "cx", "dx", "si", "di", "8", "9", "10", "11"},
    "mul": {"ax", "dx"}, "div": {"ax", "dx"}, "idiv": {"ax", "dx"}, "cltq": {"ax"},
    "cqto": {"dx"}, "cltd": {"dx"}, "cwtl": {"ax"}, "xchg": None, "xadd": None,
    "cmpxchg": None}  # None: writes its operands, whichever they are


def _family(operand: str) -> tuple[str, bool] | None:
    """A register operand's family and whether the operand is all of it, or 32 bits of it
    (a 32-bit write zeroes the rest); None for anything else."""
    m = re.fullmatch(r"%(?:[re]([a-d]x|si|di|bp|sp)|r(\d+)d?)", operand)
    if m:
        return m.group(1) or m.group(2), True
    m = re.fullmatch(r"%(?:([a-d])[lhx]|(si|di|bp|sp)l?|r(\d+)[wb])", operand)
    if m:
        return (f"{m.group(1)}x" if m.group(1) else m.group(2) or m.group(3)), False
    return None


def _ecx_is_zero(window: list[tuple[str, str]]) -> bool:
    """Whether the straight-line instructions ``window`` (mnemonic, operands; the latest
    last) leave ecx = 0: its last write zeroes it, or copies a register whose last write
    zeroes it. Any other write, or one this cannot read, answers no."""
    want = "cx"
    for mnem, ops in reversed(window):
        implicit = next((v for k, v in IMPLICIT_WRITES.items() if mnem.startswith(k)), ())
        operands = [_family(o) for o in re.split(r",(?![^(]*\))", ops) if o]
        named = {f[0] for f in operands if f}
        if implicit is None and want in named or implicit and want in implicit:
            return False
        dest = operands[-1] if operands else None
        if dest is None or dest[0] != want:
            continue
        src = operands[0] if len(operands) == 2 else None
        source = ops.split(",")[0]
        if not dest[1]:
            return False  # a partial write: the rest of the register is unknown
        if mnem.startswith(("xor", "sub")) and src == dest or (
                mnem.startswith("mov") and source == "$0x0"):
            return True
        if mnem.startswith("mov") and src and src[1]:
            want = src[0]  # a copy: now, was that register zeroed?
            continue
        return False
    return False


def xgetbv_offsets(path: str) -> list[int]:
    """File offsets of every xgetbv instruction in the ELF file ``path``; HoldError where
    one is not a read of XCR0 (ecx not shown to be 0 just before it)."""
    proc = _objdump("-d", "--no-show-raw-insn", path)
    addresses, window = [], []
    for line in proc.stdout:
        m = LINE.match(line)
        if m is None:
            window = []  # a label or a gap: straight-line code starts again
            continue
        address, mnem, ops = int(m.group(1), 16), m.group(2), m.group(3).strip()
        if mnem == "xgetbv":
            if not _ecx_is_zero(window):
                proc.kill()
                raise HoldError(f"{path}: cannot show that the xgetbv at {address:#x} reads "
                                "XCR0 (ecx = 0)")
            addresses.append(address)
        window = (window + [(mnem, ops)])[-12:]
    _finish(proc, path)
    sections = _code_sections(path)
    offsets = []
    for a in addresses:
        where = [off + a - vma for vma, size, off in sections if vma <= a < vma + size]
        if len(where) != 1:
            raise HoldError(f"xgetbv at {a:#x} in {path} is in no single code section")
        offsets.append(where[0])
    return offsets


def patch_xgetbv(path: str) -> int:
    """Replace every xgetbv in the ELF file ``path`` (a copy) by ``lea eax, [rcx + 7]``;
    return how many there were."""
    offsets = xgetbv_offsets(path)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    for o in offsets:
        if data[o:o + 3] != XGETBV:
            raise HoldError(f"{path}: the bytes at offset {o:#x} are not xgetbv")
        data[o:o + 3] = XCR0_AVX_ONLY
    with open(path, "wb") as f:
        f.write(data)
    return len(offsets)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def python_path(first: str, env: dict[str, str]) -> str:
    """``env``'s PYTHONPATH with ``first`` put first."""
    return os.pathsep.join([first] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                      if p])


def imported_from(path: str) -> bool:
    """Whether this process's onnxruntime extension is the held copy under ``path``."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ext

    return os.path.abspath(ext.__file__).startswith(os.path.abspath(path) + os.sep)


def hold_onnxruntime(dest: str) -> str:
    """Copy the installed ``onnxruntime`` package into ``dest`` with its native libraries'
    xgetbv patched, to be put first on the ``PYTHONPATH`` of the processes to hold; returns
    a line saying what was done. HoldError where it cannot be done."""
    import importlib.util

    flags = _cpu_flags()
    if not {"avx", "avx2", "avx512f"} <= flags:
        raise HoldError("this CPU (or its OS) reports no AVX-512 (or no AVX2): nothing to "
                        "hold ONNX Runtime from, or no AVX2 to hold it to")
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise HoldError("onnxruntime is not installed")
    src = list(spec.submodule_search_locations)[0]
    copy = os.path.join(dest, "onnxruntime")
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    patched = {}
    for root, _, files in os.walk(copy):
        for name in sorted(files):
            path = os.path.join(root, name)
            if re.search(r"\.so(\.|$)", name) and not os.path.islink(path):
                n = patch_xgetbv(path)
                if n:
                    patched[name] = n
    loaded = [name for name in patched if name.startswith(EXTENSION)]
    if not loaded:
        raise HoldError(f"no xgetbv in {src}'s {EXTENSION} extension: MLAS's test is not "
                        "where expected")
    check = subprocess.run([sys.executable, "-c", "import onnxruntime"],
                           env={**os.environ, "PYTHONPATH": python_path(dest, os.environ)},
                           capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise HoldError(f"the held copy does not import: {check.stderr.strip()[-300:]}")
    return (f"a copy whose xgetbv reads XCR0 as x87, SSE and AVX state only, so MLAS runs "
            f"its FMA3 kernels ({patched[loaded[0]]} xgetbv replaced in the extension "
            f"Python loads)")
