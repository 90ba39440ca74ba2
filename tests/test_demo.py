"""The demo: the adding problem's data, the NumPy tanh RNN against torch.nn.RNN, and a tiny
run of ``python -m grufast demo`` writing its JSON and figure."""

import json

import numpy as np
import pytest
import torch

from grufast import cli, demo


def test_adding_problem():
    rng = np.random.default_rng(0)
    x, y, marks = demo.adding_problem(rng, 4000, 20)
    assert x.shape == (20, 4000, 2) and y.shape == (4000, 1)
    assert np.all(x[:, :, 1].sum(axis=0) == 2)
    assert np.all(marks[:, 0] < 10) and np.all(marks[:, 1] >= 10)
    cols = np.arange(4000)
    np.testing.assert_allclose(y[:, 0], x[marks[:, 0], cols, 0] + x[marks[:, 1], cols, 0],
                               rtol=1e-6)
    # always answering 1 scores the baseline
    assert abs(np.mean((y - 1) ** 2) - demo.BASELINE_MSE) < 0.01
    with pytest.raises(ValueError, match="T must be at least 2"):
        demo.adding_problem(rng, 3, 1)


def test_tanh_rnn_matches_torch():
    rng = np.random.default_rng(1)
    T, B, I, H = 7, 3, 2, 5
    rnn = demo.TanhRNN(I, H, dtype=np.float64, seed=2)
    ref = torch.nn.RNN(I, H, dtype=torch.float64)
    ref.load_state_dict({k: torch.tensor(v) for k, v in rnn.state_dict().items()})
    x = rng.standard_normal((T, B, I))
    dh = rng.standard_normal((B, H))
    xt = torch.tensor(x, requires_grad=True)
    _, h_n = ref(xt)
    h_n[0].backward(torch.tensor(dh))
    h = rnn(x)
    np.testing.assert_allclose(h, h_n[0].detach().numpy(), rtol=0, atol=1e-12)
    dx = rnn.backward(dh)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-12)
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(rnn.grads[name], p.grad.numpy(), rtol=0, atol=1e-12)


def test_demo_cli_tiny_run(tmp_path, capsys):
    out_json, out_png = tmp_path / "demo.json", tmp_path / "demo.png"
    rc = cli.main(["demo", "--T", "12", "--hidden", "8", "--steps", "4", "--batch", "5",
                   "--seed", "3", "--json", str(out_json), "--plot", str(out_png), "--quiet"])
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert result["T"] == 12 and result["baseline_mse"] == pytest.approx(1 / 6)
    for name in ("gru", "rnn"):
        r = result[name]
        assert 0 < r["test_mse"] < 10 and r["seconds"] > 0
        assert len(r["grad_per_step"]) == 12 and len(r["curve"]) >= 2
    assert np.asarray(result["example"]["z"]).shape == (12, 8)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "GRU" in table and "RNN" in table and "baseline" in table


@pytest.mark.parametrize("argv, message", [
    (["demo", "--steps", "0"], "--steps takes a positive integer, got '0'"),
    (["demo", "--T", "1"], "--T takes an integer >= 2, got '1'"),
    (["demo", "--lr", "-1"], "--lr takes a finite number > 0, got '-1'"),
    (["demo", "--lr", "inf"], "--lr takes a finite number > 0, got 'inf'"),
    (["demo", "--seed", "-1"], "--seed takes an integer >= 0, got '-1'"),
    (["--seed", "-1"], "--seed takes an integer >= 0"),
    (["demo", "--json", "{missing}/d.json"], "does not exist"),
    (["demo", "--plot", "{dir}"], "is a directory, not a file to write"),
    (["bench", "--json", "{missing}/b.json"], "does not exist"),
    (["bench", "--plot", "{dir}"], "is a directory"),
    (["check", "--repeats", "0"], "--repeats takes a positive integer"),
])
def test_cli_rejects_bad_settings_before_any_work(argv, message, tmp_path, capsys):
    """A usage error (exit status 2) at once: a bad output path used to end the demo or the
    bench with a traceback after the whole run, and --lr inf or --seed -1 in NumPy's or the
    optimiser's error."""
    argv = [a.format(missing=tmp_path / "missing", dir=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_training_runs_on_tiny_shapes():
    """The training bench's code paths (no timing claims here)."""
    from grufast import bench_training as bt

    it = bt.iteration(T=5, B=4, I=2, H=8, rounds=1, per_round=1)
    assert it["ratio"] > 0 and it["grufast"]["median_ms"] > 0
    prof = bt.profile(T=5, B=4, I=2, H=8, repeats=1)
    assert {"GRU forward (train)", "GRU backward", "Adam step"} <= set(prof)
    floors = bt.kernel_floor(T=5, B=4, I=2, H=8, rounds=1)
    assert all(v > 0 for v in floors.values()) and len(floors) == 4
    (row,) = bt.gates_cost([(5, 2, 3, 4)], rounds=1, per_round=1)
    assert row["ratio"] > 0
    sol = bt.time_to_solution(T=6, H=4, batch=8, target=10.0, max_steps=10, eval_every=5)
    assert sol["grufast"]["steps"] == sol["torch"]["steps"] == 5
    report = bt.format_report({"load_average": (0.0, 0.0, 0.0),
                               "threads=1": {"iteration": it, "profile": prof,
                                             "kernels": floors, "gates": [row],
                                             "solution": sol}})
    assert "grufast / torch" in report
