"""The bench's hold of ONNX Runtime to AVX2 (grufast._bench_hold): every xgetbv instruction
of a native library replaced, nothing else touched, the installed package left as it was,
and the held copy computing what the installed one does."""

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from grufast import _bench_env as E
from grufast._bench_hold import (
    HoldError,
    cannot_hold,
    hold_onnxruntime,
    patch_xgetbv,
    xgetbv_offsets,
)

needs_x86 = pytest.mark.skipif(os.uname().machine != "x86_64", reason="xgetbv is x86-64")
# Holding ONNX Runtime needs objdump and something to hold it from (the hold refuses, with
# why, elsewhere: test_bench's emulation test checks that branch).
needs_hold = pytest.mark.skipif(cannot_hold() is not None,
                                reason="holding ONNX Runtime needs objdump and a CPU with "
                                       "AVX-512")

# One function reads XCR0 with junk in eax and edx beforehand (the patch must set all of
# eax, not only its low byte); the other returns a constant whose encoding contains
# xgetbv's three bytes (mov eax, 0xd0010f: b8 0f 01 d0 00), which a byte search would
# "patch" into a different constant. Linked with its code at 0x10000000, far from its file
# offset, so that the patch must map addresses to offsets.
LIB_SOURCE = textwrap.dedent("""
    unsigned xcr0_low32(void) {
        unsigned eax, edx;
        __asm__ volatile ("movl $0xdeadbeef, %%eax\\n\\tmovl $0xfeedface, %%edx\\n\\txgetbv"
                          : "=a"(eax), "=d"(edx) : "c"(0));
        return eax;
    }
    unsigned lookalike(void) {
        unsigned v;
        __asm__ volatile ("movl $0xd0010f, %0" : "=a"(v));
        return v;
    }
""")
# An xgetbv of an XCR the caller picks: not provably XCR0, so not patched.
ANY_XCR_SOURCE = textwrap.dedent("""
    unsigned xcr_low32(unsigned which) {
        unsigned eax, edx;
        __asm__ volatile ("xgetbv" : "=a"(eax), "=d"(edx) : "c"(which));
        return eax;
    }
""")


def _compile(d, source, name, *flags):
    src = d / f"{name}.c"
    src.write_text(source)
    lib = d / f"lib{name}.so"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", *flags, str(src), "-o", str(lib)],
                   check=True)
    return lib


@pytest.fixture(scope="module")
def tiny_lib(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("xgetbv"), LIB_SOURCE, "x",
                    "-Wl,-Ttext-segment=0x10000000")


def _call(lib, name):
    """The function's result in a fresh process (a patched copy loads under a new name)."""
    code = f"import ctypes; print(ctypes.CDLL({str(lib)!r}).{name}())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


@needs_x86
def test_patch_replaces_each_xgetbv_and_nothing_else(tiny_lib, tmp_path):
    """After the patch XCR0's low 32 bits read exactly x87 | SSE | AVX (AVX-512's bits 5-7
    and AMX's 17-18 clear, whatever eax held before), and the look-alike bytes inside
    another instruction are left alone."""
    before = _call(tiny_lib, "xcr0_low32")
    assert before & 0x7 == 0x7  # this machine's OS saves AVX state
    copy = tmp_path / "libx_held.so"
    shutil.copy(tiny_lib, copy)
    data = copy.read_bytes()
    assert data.count(b"\x0f\x01\xd0") == 2  # the instruction and the look-alike
    assert patch_xgetbv(str(copy)) == 1
    assert _call(copy, "xcr0_low32") == 0x7
    assert _call(copy, "lookalike") == 0xd0010f == _call(tiny_lib, "lookalike")
    assert xgetbv_offsets(str(copy)) == []
    changed = [i for i, (a, b) in enumerate(zip(data, copy.read_bytes())) if a != b]
    assert len(changed) <= 3 and changed[-1] - changed[0] <= 2


@needs_x86
def test_an_xgetbv_not_shown_to_read_xcr0_is_refused(tmp_path):
    """With ecx from the caller, the replacement's result would not be XCR0's: refused,
    and the file left as it was."""
    lib = _compile(tmp_path, ANY_XCR_SOURCE, "anyxcr")
    data = lib.read_bytes()
    with pytest.raises(HoldError, match="cannot show"):
        patch_xgetbv(str(lib))
    assert lib.read_bytes() == data


# Each: an xgetbv whose ecx the patch cannot show to be 0, in hand-written code (the .L
# labels leave no symbol, so objdump's listing runs straight through them).
NOT_SHOWN = {
    "after-ret": "xor %ecx, %ecx\n ret\n xgetbv\n ret",
    "branch-in": "xor %ecx, %ecx\n.Lin: xgetbv\n ret\n mov %edi, %ecx\n jmp .Lin",
    "lock-prefix": "xor %ecx, %ecx\n lock xadd %ecx, (%rsi)\n xgetbv\n ret",
    "call-between": "xor %ecx, %ecx\n call *%rdx\n xgetbv\n ret",
    "copied-unknown": "xor %r9d, %r9d\n mov %edi, %r9d\n mov %r9d, %ecx\n xgetbv\n ret",
}


@needs_x86
@pytest.mark.parametrize("case", sorted(NOT_SHOWN))
def test_an_xgetbv_whose_ecx_cannot_be_shown_zero_is_refused(tmp_path, case):
    """Code before a ret or a jump, a branch into the stretch after the zeroing, a prefixed
    or calling instruction, a register copied in that was not zeroed: each refused."""
    body = NOT_SHOWN[case].replace("\n", "\\n")
    source = f'__asm__(".text\\n.globl f\\n.type f,@function\\nf:\\n {body}\\n");\n'
    lib = _compile(tmp_path, source, "notshown")
    with pytest.raises(HoldError, match="cannot show|a branch lands"):
        patch_xgetbv(str(lib))


@needs_x86
def test_without_objdump_the_hold_says_why(tiny_lib, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(HoldError, match="objdump"):
        xgetbv_offsets(str(tiny_lib))


def test_a_worker_that_did_not_import_the_held_copy_records_onnxruntime_unheld(monkeypatch):
    """The record names ONNX Runtime held only where the worker imported the held copy: a
    failed hold, or a PYTHONPATH that did not take, says so."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv(E.ORT_HOLD_VAR, '{"path": "/nonexistent", "how": "x"}')
    rec = E.emulation("avx2", ["onnxruntime"])
    assert "onnxruntime" not in rec["held"] and "not the held copy" in rec["not_held"][
        "onnxruntime"]
    monkeypatch.setenv(E.ORT_HOLD_VAR, '{"error": "objdump is not installed"}')
    rec = E.emulation("avx2", ["onnxruntime"])
    assert rec["not_held"] == {"onnxruntime": "objdump is not installed"}
    line = E.describe({"cpu": {"model": "m", "flags": []}, "isa_build": "avx2", "l2": "x",
                       "blas": {"grufast": {}}, "thread_mode": "1 thread", "date": "d",
                       "emulated": rec})
    assert "AVX2 emulated (every peer held to it but onnxruntime)" in line


def _tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".pyc"):
                with open(os.path.join(root, name), "rb") as f:
                    h.update(name.encode() + f.read())
    return h.hexdigest()


GRU_RUN = textwrap.dedent("""
    import sys, numpy as np, onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    T, B, I, H = 7, 16, 32, 48
    rng = np.random.default_rng(0)
    W = rng.standard_normal((1, 3 * H, I)).astype(np.float32) * 0.2
    R = rng.standard_normal((1, 3 * H, H)).astype(np.float32) * 0.2
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=H,
                            linear_before_reset=1)
    g = helper.make_graph([node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.save(sys.argv[1], s.run(None, {"X": x})[0])
    print(ort.__file__)
""")


@needs_hold
def test_the_held_copy_computes_what_the_installed_package_does(tmp_path):
    """The installed package is untouched, the copy has no xgetbv left, a process given the
    copy first on PYTHONPATH imports it, and its GRU gives the installed one's outputs."""
    ort = pytest.importorskip("onnxruntime")
    installed = os.path.dirname(ort.__file__)
    before = _tree_digest(installed)
    path = str(tmp_path / "held")
    how = hold_onnxruntime(path)
    assert _tree_digest(installed) == before
    assert "FMA3" in how and "replaced in the extension" in how
    held = os.path.join(path, "onnxruntime")
    (ext,) = [f for f in os.listdir(os.path.join(held, "capi"))
              if f.startswith("onnxruntime_pybind11_state")]  # the library Python loads
    assert xgetbv_offsets(os.path.join(held, "capi", ext)) == []
    script = tmp_path / "gru.py"
    script.write_text(GRU_RUN)
    outs = {}
    for label, env_path in (("installed", ""), ("held", path)):
        env = {**os.environ, "PYTHONPATH": env_path}
        out = tmp_path / f"{label}.npy"
        proc = subprocess.run([sys.executable, str(script), str(out)], env=env,
                              capture_output=True, text=True, check=True)
        where = os.path.dirname(proc.stdout.strip())
        assert where == (held if label == "held" else installed)
        outs[label] = np.load(out)
    np.testing.assert_allclose(outs["held"], outs["installed"], rtol=0, atol=1e-5)
    assert np.abs(outs["held"]).max() > 0.1  # a GRU that did something
