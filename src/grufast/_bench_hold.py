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
Haswell rate, 0.54x the installed one's, on a CPU whose 512-bit units are full width (Zen 5).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

XGETBV = b"\x0f\x01\xd0"
XCR0_AVX_ONLY = b"\x8d\x41\x07"  # lea eax, [rcx + 7]: 7 = x87 | SSE | AVX state, ecx = 0
EXTENSION = "onnxruntime_pybind11_state"  # the library Python loads (capi/)
LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")


class HoldError(Exception):
    """ONNX Runtime cannot be held here; the message says why."""


def _objdump(*args: str) -> subprocess.Popen:
    """objdump with ``args``, its listing read line by line from ``stdout`` (the whole
    listing of ONNX Runtime's extension is ~250 MB of text); stderr to a temporary file, so
    that no amount of warnings can fill a pipe nobody reads yet."""
    exe = shutil.which("objdump")
    if exe is None:
        raise HoldError("objdump (GNU binutils) is not installed: it finds MLAS's xgetbv")
    return subprocess.Popen([exe, *args], stdout=subprocess.PIPE,
                            stderr=tempfile.TemporaryFile(mode="w+"), text=True,
                            env={**os.environ, "LC_ALL": "C"})


def _finish(proc: subprocess.Popen, what: str) -> None:
    proc.stdout.close()
    if proc.wait() != 0:
        proc.stderr.seek(0)
        raise HoldError(f"objdump failed on {what}: {proc.stderr.read().strip()[:200]}")


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


# The instructions the walk back from an xgetbv may cross (mnemonic prefixes), each writing
# at most its last operand, or the registers IMPLICIT names (by family: "cx" is rcx, ecx,
# cx, cl). Anything else (a call, a string instruction, a prefix such as lock or data16
# that objdump prints as the mnemonic) ends the walk with "not shown".
WALKABLE = ("mov", "lea", "xor", "sub", "add", "or", "and", "sh", "sa", "ro", "not", "neg",
            "inc", "dec", "test", "cmp", "bt", "set", "cmov", "push", "pop", "nop", "cpuid",
            "xgetbv", "v", "p")
READ_ONLY = ("test", "cmp", "bt", "push", "nop")  # their last operand is not written
IMPLICIT = {"cpuid": {"ax", "bx", "cx", "dx"}, "xgetbv": {"ax", "dx"}}
# Where straight-line code ends: no instruction after these follows one before them.
BOUNDARY = ("ret", "jmp", "ud2", "hlt", "int3")
BRANCH = re.compile(r"^(j[a-z]+|call|loop\w*)$")


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


def _ecx_zeroed_at(window: list[tuple[int, str, str]]) -> int | None:
    """The address of the instruction that zeroes ecx for the xgetbv after the straight-line
    instructions ``window`` (address, mnemonic, operands; the latest last), directly or
    through a register copied into it; None where that cannot be shown."""
    want = "cx"
    for address, mnem, ops in reversed(window):
        if not mnem.startswith(WALKABLE) or mnem == "pause":
            return None
        if want in IMPLICIT.get(mnem, ()):
            return None
        operands = [_family(o) for o in re.split(r",(?![^(]*\))", ops) if o]
        dest = operands[-1] if operands else None
        if mnem.startswith(READ_ONLY) or dest is None or dest[0] != want:
            continue
        src = operands[0] if len(operands) == 2 else None
        if not dest[1]:
            return None  # a partial write: the rest of the register is unknown
        if mnem in ("xor", "sub") and src == dest or (mnem == "mov" and
                                                      ops.split(",")[0] == "$0x0"):
            return address
        if mnem == "mov" and src and src[1]:
            want = src[0]  # a copy: now, was that register zeroed?
            continue
        return None
    return None


def xgetbv_offsets(path: str) -> list[int]:
    """File offsets of every xgetbv instruction in the ELF file ``path``; HoldError where
    one is not shown to read XCR0: ecx zeroed in the straight-line code just before it, with
    no branch into that stretch."""
    proc = _objdump("-d", "--no-show-raw-insn", path)
    sites, window, targets = [], [], set()
    try:
        for line in proc.stdout:
            m = LINE.match(line)
            if m is None:
                window = []  # a label or a gap: straight-line code starts again
                continue
            address, mnem, ops = int(m.group(1), 16), m.group(2), m.group(3).strip()
            if BRANCH.match(mnem) and re.match(r"[0-9a-f]+ <", ops):
                targets.add(int(ops.split()[0], 16))
            if "xgetbv" in (mnem, ops.split(" ")[0]):
                zeroed = _ecx_zeroed_at(window) if mnem == "xgetbv" else None
                if zeroed is None:
                    raise HoldError(f"{path}: cannot show that the xgetbv at {address:#x} "
                                    "reads XCR0 (ecx = 0)")
                sites.append((zeroed, address))
            window = [] if mnem.startswith(BOUNDARY) else (window + [(address, mnem, ops)])[-12:]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    _finish(proc, path)
    for zeroed, address in sites:
        if any(zeroed < t <= address for t in targets):
            raise HoldError(f"{path}: a branch lands between the zeroing of ecx at "
                            f"{zeroed:#x} and the xgetbv at {address:#x}")
    sections = _code_sections(path)
    offsets = []
    for _, a in sites:
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


def cannot_hold() -> str | None:
    """Why ONNX Runtime cannot be held on this machine, or None: objdump finds the sites,
    and there must be AVX-512 to hold it from and AVX2 to hold it to."""
    from grufast._bench_env import cpu_flags

    if shutil.which("objdump") is None:
        return "objdump (GNU binutils) is not installed: it finds MLAS's xgetbv"
    if not {"avx", "avx2", "avx512f"} <= cpu_flags():
        return ("this CPU (or its OS) reports no AVX-512 (or no AVX2): nothing to hold ONNX "
                "Runtime from, or no AVX2 to hold it to")
    return None


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

    why_not = cannot_hold()
    if why_not:
        raise HoldError(why_not)
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
