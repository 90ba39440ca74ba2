"""The bench (python -m grufast bench): each peer set up at its best and checked, every peer
computing the same thing as grufast, and the command's options, with and without extras."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import grufast
from grufast import _bench_peers as P
from grufast import bench
from grufast._bench_hold import cannot_hold

# Where the grufast under test was imported from (the source tree or an installed package):
# the bench's subprocesses must import the same one.
SRC = os.path.dirname(os.path.dirname(grufast.__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout's tools/


def _bench_cli(tmp_path, *args, path_first=()):
    """Run ``python -m grufast bench`` with quick settings; returns (proc, results)."""
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*path_first, os.path.abspath(SRC),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "grufast", "bench", "--quick", "--budget", "0",
                           "--jax-unroll", "1",
                           "--json", str(out), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return proc, json.load(f)


# -- each peer's configuration ---------------------------------------------------------------

def test_onnxruntime_runs_one_gru_node_through_iobinding(tmp_path):
    import onnx

    case = P.Case(6, 3, 5, 4)
    prob = P.make_problem(case)
    model = P._onnx_gru_model(case, prob.state_dict, T=case.T, with_state=False,
                              outputs_y=True)
    graph = onnx.load_from_string(model).graph
    assert [n.op_type for n in graph.node] == ["GRU"]
    assert [i.name for i in graph.input] == ["x"]  # no explicit zero initial state
    # ... and still one node once ONNX Runtime has optimised it
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node] == ["GRU"]

    run = P.make_peer("onnxruntime", prob, 1)
    assert run.config["nodes"] == ["GRU"]
    y1 = run.infer()
    y1_copy = y1.copy()
    y1.fill(np.nan)
    y2 = run.infer()
    # IOBinding into a preallocated buffer: every call writes the same array, in place
    assert y2 is y1 and np.array_equal(y2, y1_copy)


def _loop_transposes(hlo: str) -> list[str]:
    """Transposes of data read from outside (a computation's parameter: weights, carried
    state) inside any while loop's body or what it calls: a copy made on every step.

    Transposes of a value computed in the same fused loop are index remaps of that loop, not
    copies (at B = 1 XLA writes each step's weight-gradient outer product that way)."""
    comps, cur = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            cur = m.group(1)
            comps[cur] = []
        elif cur:
            comps[cur].append(line)
    stack, seen = re.findall(r"body=%?([\w.\-]+)", hlo), set()
    while stack:
        c = stack.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            stack += re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)
    found = []
    for c in seen:
        params = set(re.findall(r"%([\w.\-]+)\s*=\s*\S+\s+parameter\(", "\n".join(comps[c])))
        for line in comps[c]:
            m = re.search(r"=\s*\S+\s+transpose\(%([\w.\-]+)\)", line)
            if m and m.group(1) in params:
                found.append(line.strip())
    return found


def test_jax_step_has_no_transpose_inside_the_loop():
    import jax
    import jax.numpy as jnp

    case = P.Case(8, 1, 256, 256)
    prob = P.make_problem(case)
    params = P.jax_params(case, prob.state_dict)
    xs, dy = jnp.asarray(prob.x), jnp.asarray(prob.dy)
    h0 = jnp.zeros((1, 1, 256), jnp.float32)
    infer, train = P.jax_functions(case, 2)

    # The checker sees the flaw it looks for: h @ w.T inside the scan body (XLA copies the
    # transposed weights every step at this size).
    def transposed_in_loop(w, xs):
        return jax.lax.scan(lambda h, g: (jnp.tanh(g[:, :256] + (h @ w.T)[:, :256]),) * 2,
                            jnp.zeros((1, 256)), xs)[0]

    bad = jax.jit(transposed_in_loop).lower(
        jnp.asarray(prob.state_dict["weight_hh_l0"]), jnp.ones((8, 1, 768))).compile()
    assert _loop_transposes(bad.as_text())
    assert not _loop_transposes(infer.lower(params, xs).compile().as_text())
    assert not _loop_transposes(train.lower(params, xs, h0, dy).compile().as_text())


def test_jax_unroll_is_swept_and_cached(monkeypatch):
    monkeypatch.setattr(P, "unroll_cache", {})
    monkeypatch.setattr(P, "UNROLLS", (1, 2))
    run = P.make_peer("jax", P.make_problem(P.Case(5, 2, 3, 4)), 1, sweep_s=0.0)
    assert run.config["unroll"]["infer"] in P.UNROLLS
    assert set(P.unroll_cache.values()) <= set(P.UNROLLS) and len(P.unroll_cache) == 2


# -- like for like ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", [
    P.Case(7, 3, 5, 4),
    P.Case(6, 2, 3, 4, layers=2, bidirectional=True),
    P.Case(6, 2, 3, 4, linear_before_reset=False),
    P.Case(5, 2, 3, 4, dtype="float64"),
], ids=["default", "2-layer-bidirectional", "no-lbr", "float64"])
def test_every_peer_computes_what_grufast_computes(case):
    prob = P.make_problem(case)
    ours = P.make_peer("grufast", prob, 1)
    y0, g0 = ours.y_of(ours.infer()), ours.grads_of(ours.train())
    tol = 1e-5 if case.dtype == "float32" else 1e-12
    ran = []
    for name in P.PEERS:
        kw = {"unroll": {"infer": 2, "train": 2}} if name == "jax" else {}
        run = P.make_peer(name, prob, 1, **kw)
        if run.infer is None:
            assert run.na["infer"]  # a reason, shown as n/a
            continue
        with run.context.get("infer", _nothing)():
            y = run.y_of(run.infer())
        np.testing.assert_allclose(y, y0, atol=tol, err_msg=name)
        ran.append(name)
        if run.train is not None:
            g = run.grads_of(run.train())
            assert sorted(g) == sorted(g0), name
            for k in g0:
                np.testing.assert_allclose(g[k], g0[k], atol=10 * tol, err_msg=f"{name} {k}")
    expected = {"default": {"numpy-reference", "torch", "onnxruntime", "jax"}}
    if case == P.Case(7, 3, 5, 4):
        assert set(ran) == expected["default"]
    if not case.linear_before_reset:
        assert "torch" not in ran and "onnxruntime" in ran


def _nothing():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize("layers", [1, 2])
def test_streaming_peers_agree(layers):
    case = P.Case(1, 1, 16, 16, layers)
    samples = P.stream_peers(case, 1, ["torch", "onnxruntime", "jax"])
    finals = {n: np.asarray(f()).reshape(-1)[-16:] for n, f in samples.items()
              if not isinstance(f, str)}
    assert {"torch", "onnxruntime", "jax", "grufast GRU.step (H,)"} <= set(finals)
    want = finals["grufast GRU.step (1, H)"]
    for name, h in finals.items():
        np.testing.assert_allclose(h, want, atol=1e-5, err_msg=name)
    assert ("grufast GRUCell (H,)" in finals) == (layers == 1)


def test_training_step_pays_the_weight_refresh(monkeypatch):
    import grufast

    calls = []
    original = grufast.GRU._weights_changed
    monkeypatch.setattr(grufast.GRU, "_weights_changed",
                        lambda self: calls.append(1) or original(self))
    run = P.make_peer("grufast", P.make_problem(P.Case(4, 2, 3, 4)), 1)
    before = len(calls)
    run.train()
    run.train()
    assert len(calls) - before == 2


def test_gemm_reference_writes_in_place_and_counts_the_flops():
    case = P.Case(10, 16, 8, 4)
    assert case.gru_flops() == 2 * 10 * 16 * (8 + 4) * 12
    call = P.sgemm_call(case)
    assert call() is call()  # the preallocated output, no copy


# -- the command -----------------------------------------------------------------------------

def test_custom_shapes_and_peers_and_thread_record(tmp_path):
    proc, results = _bench_cli(tmp_path, "--shape", "5,2,3,4", "--shape", "4,16,3,4",
                               "--peers", "torch,onnxruntime", "--threads", "1")
    (res,) = results
    assert [r["shape"] for r in res["rows"]] == [[5, 2, 3, 4], [4, 16, 3, 4]]
    for row in res["rows"]:
        assert set(row["inference"]) == {"grufast", "torch", "onnxruntime"}
        assert set(row["training"]) == {"grufast", "torch", "onnxruntime"}
        assert "na" in row["training"]["onnxruntime"]
        stats = row["inference"]["torch"]
        assert stats["q1"] <= stats["median"] <= stats["q3"] and stats["rounds"] >= 3
    assert res["rows"][0]["sgemm"] is None and res["rows"][1]["sgemm"]["median"] > 0
    env = res["environment"]
    assert env["limits"]["torch_num_threads"] == 1       # what the bench says it set
    assert env["limits"]["affinity"] == [env["limits"]["affinity"][0]]
    assert env["thread_mode"].startswith("1 thread, pinned to one core")
    assert env["isa_build"] in ("baseline", "avx2", "avx512") and env["l2"]
    assert env["blas"]["grufast"]["internal_api"]
    assert env["versions"]["torch"] and env["date"].endswith("UTC")
    assert "one GEMM of equal FLOPs, no gate work" in proc.stdout
    assert env["cpu"]["model"] in proc.stdout and "pinned to one core" in proc.stdout
    assert "torch" in res["streaming"]["layers"]["2"]
    from grufast._bench_plot import plot

    plot(results, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_variants_show_peers_that_cannot_as_not_applicable(tmp_path):
    proc, (res,) = _bench_cli(tmp_path, "--shape", "4,2,3,4", "--peers",
                              "torch,onnxruntime,jax", "--threads", "1", "--layers", "2",
                              "--no-linear-before-reset", "--dtype", "float64")
    row = res["rows"][0]
    assert "linear_before_reset" in row["inference"]["torch"]["na"]
    assert "double" in row["inference"]["onnxruntime"]["na"]
    assert row["inference"]["jax"]["median"] > 0 and row["training"]["jax"]["median"] > 0
    assert res["settings"]["dtype"] == "float64" and res["settings"]["layers"] == 2
    assert "n/a: cannot compute this variant" in proc.stdout


def test_unknown_peer_is_refused(capsys):
    from grufast.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--peers", "torch,tensorflow"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "tensorflow" in err and "onnxruntime" in err


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,0", "a,b,c,d"])
def test_bad_shape_is_refused(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="T,B,I,H"):
        bench.parse_shape(text)


BLOCKED = ["torch", "onnxruntime", "onnx", "jax", "jaxlib", "threadpoolctl", "tqdm",
           "matplotlib"]


def test_runs_without_the_bench_extra(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED))
    proc, (res,) = _bench_cli(tmp_path, "--shape", "4,2,3,4", "--threads", "1",
                              "--plot", str(tmp_path / "p.png"),
                              path_first=[str(site)])
    err = proc.stderr
    for peer in ("torch", "onnxruntime", "jax", "threadpoolctl", "matplotlib"):
        assert f"{peer}: not installed" in err
    assert "pip install" in err
    assert set(res["rows"][0]["inference"]) == {"grufast", "numpy-reference"}
    assert res["environment"]["limits"]["env"]["OPENBLAS_NUM_THREADS"] == "1"
    assert not (tmp_path / "p.png").exists()


def test_bench_reports_the_training_iteration_and_the_gates_cost(tmp_path):
    # The end-to-end training ratio (grufast's iteration vs PyTorch's) and GRU.gates' cost
    # next to inference are part of the bench's output and JSON.
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, "-m", "grufast", "bench", "--quick", "--threads", "1", "--peers",
         "torch", "--shape", "5,2,3,4", "--no-reference", "--budget", "0.05", "--json",
         str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "grufast / torch =" in proc.stdout and "GRU.gates vs inference" in proc.stdout
    (res,) = json.loads(out.read_text())
    it = res["training_iteration"]
    assert it["shape"] == {"T": 100, "B": 64, "I": 2, "H": 128}
    assert it["ratio"] == pytest.approx(it["grufast"]["median_ms"] / it["torch"]["median_ms"])
    (g,) = res["gates"]
    assert (g["T"], g["B"], g["I"], g["H"]) == (5, 2, 3, 4) and g["gates_ms"] > 0


def test_interleaved_rounds_vary_who_comes_next():
    """A peer whose pool keeps spinning after its calls slows whoever runs next, so the
    order is shuffled every round: each peer follows several different ones (a fixed
    cyclic order, even rotated, always gives it the same predecessor), and every peer runs
    once per round."""
    from grufast._bench_timing import interleaved

    log: list[str] = []
    names = ["grufast", "torch", "onnxruntime", "jax", "sgemm"]
    calls = {n: (lambda n=n: log.append(n)) for n in names}
    res = interleaved(calls, budget_s=0.0, min_rounds=30, max_rounds=30)
    assert all(res[n]["rounds"] == 30 for n in names)
    timed = [n for i, n in enumerate(log) if i >= 2 * len(names)]  # after the warm-up calls
    before: dict[str, set[str]] = {n: set() for n in names}
    for prev, cur in zip(timed, timed[1:]):
        if prev != cur:
            before[cur].add(prev)
    assert all(len(before[n]) >= 3 for n in names), before


def test_settle_waits_for_threads_that_keep_running():
    """With two threads a burst starts only once the process is quiet: the previous peer's
    pool threads (ONNX Runtime's spin ~45 ms after each run) would otherwise hold a core
    while the next peer runs. A thread that keeps a core busy for 0.3 s holds settle()
    back until it stops; with nothing running, settle() returns after its first quiet
    window."""
    import threading
    import time

    from grufast._bench_timing import QUIET_MAX_S, SETTLE_S, settle

    assert settle() < SETTLE_S + 0.2  # nothing running: the first window is quiet
    stop = time.perf_counter() + 0.3

    def spin():
        while time.perf_counter() < stop:
            pass

    t = threading.Thread(target=spin)
    t.start()
    waited = settle()
    t.join()
    assert 0.25 <= waited <= QUIET_MAX_S + 0.2


def test_tables_only_skips_the_extras(tmp_path):
    """--tables-only (the many-core run's form): the inference and training tables, and no
    streaming step, training iteration, gates cost or reduced-precision run."""
    proc, (res,) = _bench_cli(tmp_path, "--shape", "4,2,3,4", "--peers", "onnxruntime",
                              "--threads", "1", "--tables-only")
    assert not {"streaming", "gates", "training_iteration", "quantized"} & set(res)
    assert res["settings"]["extras"] is False
    assert set(res["rows"][0]["inference"]) == {"grufast", "onnxruntime"}
    assert "inference (median ms per call)" in proc.stdout
    assert "streaming step" not in proc.stdout and "reduced precision" not in proc.stdout


def test_avx2_emulation_holds_every_peer_that_has_a_setting(tmp_path, monkeypatch):
    """--emulate avx2: grufast's AVX2 build, OpenBLAS on its Haswell kernels, PyTorch's and
    JAX's settings in the worker (JAX's products sent to oneDNN, which its setting holds),
    a user's own XLA flags kept, ONNX Runtime's held copy imported (_bench_hold), and the
    record and the table saying every peer is held."""
    from grufast import _bench_env as E

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX512 --xla_dump_to=/tmp/x")
    env = E.worker_env(1, "avx2")
    plain = E.worker_env(1)
    monkeypatch.delenv("XLA_FLAGS")
    flags = env["XLA_FLAGS"].split()
    assert "--xla_cpu_max_isa=AVX2" in flags and "--xla_cpu_max_isa=AVX512" not in flags
    assert "--xla_dump_to=/tmp/x" in flags and "--xla_cpu_experimental_ynn_fusion_type=" in flags
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["GRUFAST_ISA"] == "avx2"
    assert "GRUFAST_BENCH_EMULATE" not in plain and "--xla_cpu_max_isa=AVX512" in plain["XLA_FLAGS"]

    proc, (res,) = _bench_cli(tmp_path, "--shape", "4,16,3,4",
                              "--peers", "torch,jax,onnxruntime",
                              "--threads", "1", "--tables-only", "--emulate", "avx2")
    rec = res["environment"]
    has_avx2 = {"avx2", "fma"} <= set(rec["cpu"]["flags"])
    assert rec["isa_build"] == ("avx2" if has_avx2 else "baseline")
    # The hold needs objdump and a CPU with AVX-512 to hold ONNX Runtime from.
    can_hold = cannot_hold() is None
    assert rec["emulated"]["isa"] == "avx2"
    assert rec["emulated"]["not_held"] == {} if can_hold else (
        "onnxruntime" in rec["emulated"]["not_held"])
    assert rec["emulated"]["held"]["grufast"] == "GRUFAST_ISA=avx2"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in rec["emulated"]["held"]["jax"]
    assert "--xla_cpu_max_isa=AVX2" in rec["emulated"]["held"]["jax"]
    if can_hold:
        assert "FMA3 kernels" in rec["emulated"]["held"]["onnxruntime"]
        assert "held_onnxruntime" in res["settings"]["onnxruntime_hold"]["path"]
    assert rec["limits"]["env"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert "--xla_cpu_experimental_ynn_fusion_type=" in rec["limits"]["env"]["XLA_FLAGS"]
    if has_avx2:
        assert rec["blas"]["grufast"]["architecture"] == "Haswell"
    assert ("AVX2 emulated (every peer held to it);" if can_hold else
            "AVX2 emulated (every peer held to it but onnxruntime);") in proc.stdout
    assert res["rows"][0]["inference"]["jax"]["median"] > 0  # XLA accepted the flags
    assert res["rows"][0]["inference"]["onnxruntime"]["median"] > 0
    table = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "readme_table.py"),
                            str(tmp_path / "bench.json")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.path.abspath(SRC)}, check=True)
    assert ("against the fastest peer, every peer held to AVX2: 1 core" if can_hold else
            "against the fastest peer held to AVX2 (all but onnxruntime): 1 core") in table.stdout


def test_a_cpu_sysfs_does_not_know_is_its_own_core():
    from grufast import _bench_env as E

    assert E._siblings(10**6) == [10**6]


def test_pinning_takes_one_cpu_per_physical_core_first(monkeypatch):
    """n threads are pinned to n physical cores where the machine has them, not to n / 2
    cores' SMT sibling pairs (sysfs numbers siblings either side by side or half the
    machine apart), and the lowest cpu's core is taken last."""
    from grufast import _bench_env as E

    monkeypatch.setattr(E, "_siblings", lambda c: [c])
    assert E.cores_first([0, 1, 2, 3]) == [1, 2, 3, 0]
    assert E.cores_first([4, 6, 5]) == [5, 6, 4]  # the lowest visible cpu, not cpu 0
    for pairs, want in [({0: 1, 2: 3}, [2, 0, 3, 1]), ({0: 2, 1: 3}, [1, 0, 3, 2])]:
        sib = {**{a: [a, b] for a, b in pairs.items()}, **{b: [a, b] for a, b in pairs.items()}}
        monkeypatch.setattr(E, "_siblings", sib.__getitem__)
        assert E.cores_first([0, 1, 2, 3]) == want
        assert E.physical_cores([0, 1, 2, 3]) == 2 and E.physical_cores(want[:2]) == 2
        monkeypatch.setattr(E, "visible_cpus", lambda: [0, 1, 2, 3])
        assert E.cpus_for(2) == set(want[:2]) and E.cpus_for(4) is None
        assert E.thread_mode(4, {0, 1, 2, 3}, 8) == (
            "4 threads, pinned to 4 of 8 cpus (2 physical cores)")
