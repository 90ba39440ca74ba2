"""ONNX Runtime held to AVX2 on a CPU with AVX-512, for ``python -m grufast bench --emulate
avx2``.

MLAS, ONNX Runtime's kernels, picks its AVX-512 kernels where CPUID reports AVX512F *and*
XCR0, which the instruction ``xgetbv`` reads, says that the operating system saves the
AVX-512 registers (bits 5-7), the test every library makes. On a machine whose operating
system does not enable AVX-512 (a kernel booted with ``clearcpuid=avx512f``, a hypervisor
that masks it) those bits are clear, and MLAS runs its FMA3 (AVX2) kernels, as on an
AVX2-only CPU. ONNX Runtime has no setting for this, so the bench gives the workers a copy
of the installed package in which each ``xgetbv`` of its native libraries is replaced by
``mov al, 7; nop`` (three bytes for three): XCR0's low byte then reads x87, SSE and AVX
state and nothing else, so every AVX-512 test fails (the bits above the low byte keep what
the register held; they name state that CPUID must also report, none of it
AVX-512). The installed package is never modified.

The sites are found with ``objdump`` (GNU binutils), which decodes the instructions: the
three bytes of ``xgetbv`` also occur inside other instructions (15 times in ONNX Runtime
1.32's extension, 4 of them instructions). Without objdump, or when a site's bytes are not
``xgetbv``, ONNX Runtime is left unheld, and the bench's record says why.

Checked (``tools/ort_hold_check.py``): a 1024^3 MatMul in the held copy runs at OpenBLAS's
Haswell rate, 0.57x the unheld one's, on a CPU whose 512-bit units are full width (Zen 5).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

XGETBV = b"\x0f\x01\xd0"
AVX_STATE_ONLY = b"\xb0\x07\x90"  # mov al, 7 (x87 | SSE | AVX); nop


class HoldError(Exception):
    """ONNX Runtime cannot be held here; the message says why."""


def _objdump(*args: str) -> str:
    exe = shutil.which("objdump")
    if exe is None:
        raise HoldError("objdump (GNU binutils) is not installed: it finds MLAS's xgetbv")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HoldError(f"objdump {' '.join(args[:-1])} failed on {args[-1]}: "
                        f"{proc.stderr.strip()[:200]}")
    return proc.stdout


def _code_sections(path: str) -> list[tuple[int, int, int]]:
    """(address, size, file offset) of each code section of an ELF file."""
    out = _objdump("-h", path)
    sections = []
    # objdump -h: "Idx Name Size VMA LMA File-off Algn", then the flags on the next line.
    rows = re.finditer(r"^\s*\d+\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)"
                       r"\s+\S+\s*\n\s*([^\n]*)", out, re.M)
    for m in rows:
        if "CODE" in m.group(4):
            size, vma, offset = (int(m.group(i), 16) for i in (1, 2, 3))
            sections.append((vma, size, offset))
    return sections


def xgetbv_offsets(path: str) -> list[int]:
    """File offsets of every xgetbv instruction in the ELF file ``path``."""
    listing = _objdump("-d", "--no-show-raw-insn", path)
    addresses = [int(m.group(1), 16)
                 for m in re.finditer(r"^\s*([0-9a-f]+):\s+xgetbv\s*$", listing, re.M)]
    sections = _code_sections(path)
    offsets = []
    for a in addresses:
        where = [off + a - vma for vma, size, off in sections if vma <= a < vma + size]
        if len(where) != 1:
            raise HoldError(f"xgetbv at {a:#x} in {path} is in no single code section")
        offsets.append(where[0])
    return offsets


def patch_xgetbv(path: str) -> int:
    """Replace every xgetbv in the ELF file ``path`` (a copy) by ``mov al, 7; nop``; return
    how many there were."""
    offsets = xgetbv_offsets(path)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    for o in offsets:
        if data[o:o + 3] != XGETBV:
            raise HoldError(f"{path}: the bytes at offset {o:#x} are not xgetbv")
        data[o:o + 3] = AVX_STATE_ONLY
    with open(path, "wb") as f:
        f.write(data)
    return len(offsets)


def hold_onnxruntime(dest: str) -> tuple[str, str]:
    """Copy the installed ``onnxruntime`` package into ``dest`` with its native libraries'
    xgetbv patched. Returns the directory to put first on the workers' ``sys.path`` and a
    line saying what was done; raises HoldError where it cannot be done."""
    import importlib.util

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
                    patched[os.path.relpath(path, copy)] = n
    if not patched:
        raise HoldError(f"no xgetbv in {src}'s libraries: MLAS's test is not where expected")
    sites = ", ".join(f"{n} in {name}" for name, n in sorted(patched.items()))
    return dest, (f"a copy whose xgetbv reads XCR0 without AVX-512 state, so MLAS runs its "
                  f"FMA3 kernels (xgetbv replaced: {sites})")
