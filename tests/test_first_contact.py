"""What a new user meets first: loading the wrong file, shape mistakes in state dicts and
gradients, torch tensors that require grad, the command line's help, the package metadata."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import grufast
from grufast import cli

ROOT = Path(__file__).resolve().parents[1]


# -- grufast.load on files that are not grufast models ------------------------------------
def _foreign_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["text"] = tmp_path / "notes.txt"
    files["text"].write_text("hello, this is not a model\n")
    files["binary"] = tmp_path / "random.bin"
    files["binary"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["npy"] = tmp_path / "array.npy"
    np.save(files["npy"], np.zeros(3))
    files["npz without grufast keys"] = tmp_path / "other.npz"
    np.savez(files["npz without grufast keys"], a=np.zeros(3), b=np.ones((2, 2)))
    files["npz with object arrays"] = tmp_path / "objects.npz"
    np.savez(files["npz with object arrays"], __grufast_config__=np.array("{}"),
             weight_ih_l0=np.array([{"a": 1}, None], dtype=object))
    files["zip of text"] = tmp_path / "plain.zip"
    with zipfile.ZipFile(files["zip of text"], "w") as z:
        z.writestr("readme.txt", "not an array")
    files["empty"] = tmp_path / "empty.npz"
    files["empty"].write_bytes(b"")
    return files


@pytest.mark.parametrize("kind", ["text", "binary", "npy", "npz without grufast keys",
                                  "npz with object arrays", "zip of text", "empty"])
def test_load_foreign_file_says_not_a_model_and_never_mentions_pickle(tmp_path, kind):
    path = _foreign_files(tmp_path)[kind]
    with pytest.raises(ValueError) as info:
        grufast.load(path)
    message = str(info.value)
    assert "not a grufast model file" in message
    assert str(path) in message
    assert "pickle" not in message.lower()
    # NumPy's own error (which does suggest allow_pickle) is not chained on either.
    exc = info.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_load_missing_file_raises_file_not_found_naming_the_path(tmp_path):
    path = tmp_path / "no_such_model.npz"
    with pytest.raises(FileNotFoundError, match="no_such_model.npz"):
        grufast.load(path)
    with pytest.raises(FileNotFoundError, match="no_such_model.npz"):
        grufast.load(str(path))


def test_load_still_reads_what_save_wrote(tmp_path):
    model = grufast.GRU(3, 4, num_layers=2, seed=1)
    grufast.save(model, tmp_path / "m.npz")
    back = grufast.load(tmp_path / "m.npz")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)


# -- state-dict shapes: which sizes the dict implies, which the model has ---------------
def test_state_dict_of_another_hidden_size_names_both_sizes():
    model = grufast.GRU(32, 64)
    other = grufast.GRU(32, 128).state_dict()
    with pytest.raises(ValueError) as info:
        model.load_state_dict(other)
    message = str(info.value)
    assert "state_dict['weight_ih_l0'] has shape (384, 32)" in message
    assert "hidden_size 128" in message and "this model has hidden_size 64" in message
    assert "(192, 32) expected" in message
    assert "= (192, 32)" not in message  # the old, repetitive wording


def test_state_dict_of_another_input_size_names_both_sizes():
    model = grufast.GRU(32, 64)
    with pytest.raises(ValueError, match=r"input_size 16, but this model has input_size 32"):
        model.load_state_dict(dict(model.state_dict(), weight_ih_l0=np.zeros((192, 16))))


def test_state_dict_of_a_unidirectional_model_into_a_bidirectional_one():
    model = grufast.GRU(8, 16, num_layers=2, bidirectional=True)
    other = grufast.GRU(8, 16, num_layers=2).state_dict()
    other.update({k + "_reverse": v for k, v in other.items()})
    with pytest.raises(ValueError, match=r"layer 1's input size .* 16, but this model has "
                                         r"layer 1's input size .* 32"):
        model.load_state_dict(other)


def test_state_dict_rows_not_a_multiple_of_three_and_wrong_rank():
    cell = grufast.GRUCell(4, 8)
    with pytest.raises(ValueError, match=r"not 3 \* hidden_size .* hidden_size 8"):
        cell.load_state_dict(dict(cell.state_dict(), weight_hh=np.zeros((25, 8))))
    with pytest.raises(ValueError, match=r"must be 1-D with shape \(24,\), got shape \(2, 24\)"):
        cell.load_state_dict(dict(cell.state_dict(), bias_ih=np.zeros((2, 24))))


# -- gradients: the shape of y / h_n --------------------------------------------------------
def test_dy_shape_message_names_y_and_its_shape():
    model = grufast.GRU(32, 64, batch_first=True)
    model(np.zeros((8, 50, 32), np.float32))
    with pytest.raises(ValueError) as info:
        model.backward(np.zeros((8, 50, 32)))
    assert str(info.value) == "dy must have the shape of y, (8, 50, 64), got (8, 50, 32)"
    model(np.zeros((8, 50, 32), np.float32))
    with pytest.raises(ValueError, match=r"dh_n must have the shape of h_n, \(1, 8, 64\), got"):
        model.backward(None, np.zeros((8, 64)))


# -- torch tensors that require grad: detached, never torch's RuntimeError -----------------
def test_layer_takes_tensors_that_require_grad():
    model = grufast.GRU(6, 5, num_layers=2, seed=0)
    x = torch.randn(7, 3, 6, requires_grad=True)
    h0 = torch.randn(2, 3, 5, requires_grad=True)
    lengths = torch.tensor([7, 4, 1])
    y, h_n = model(x, h0, lengths=lengths)
    y_np, h_np = model(x.detach().numpy(), h0.detach().numpy(), lengths=[7, 4, 1])
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(h_n, h_np)
    dy = torch.ones(7, 3, 5, requires_grad=True)
    dx, dh0 = model.backward(dy, torch.zeros(2, 3, 5, requires_grad=True))
    assert dx.shape == (7, 3, 6) and dh0.shape == (2, 3, 5)
    assert x.requires_grad and x.grad is None  # the caller's tensor is left alone


def test_step_cell_and_functional_take_tensors_that_require_grad():
    uni = grufast.GRU(4, 8).eval()
    y_t, h = uni.step(torch.randn(2, 4, requires_grad=True),
                      torch.zeros(1, 2, 8, requires_grad=True))
    assert y_t.shape == (2, 8)
    cell = grufast.GRUCell(4, 8)
    assert cell(torch.randn(4, requires_grad=True),
                torch.randn(8, requires_grad=True)).shape == (8,)
    w = [torch.randn(24, 4, requires_grad=True), torch.randn(24, 8, requires_grad=True),
         torch.randn(24, requires_grad=True), torch.randn(24, requires_grad=True)]
    y, _, cache = grufast.gru_forward(torch.randn(3, 2, 4, requires_grad=True), None, *w,
                                      lengths=torch.tensor([3, 2]), training=True)
    grads = grufast.gru_backward(torch.ones(3, 2, 8, requires_grad=True), None, cache)
    assert grads.w_ih.shape == (24, 4)
    model = grufast.GRU(4, 8)
    model.load_state_dict({k: torch.tensor(v, requires_grad=True)
                           for k, v in model.state_dict().items()})


# -- the command line --------------------------------------------------------------------
def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_main_help_is_plain_text_and_documents_every_option(capsys):
    text = _help(["--help"], capsys)
    assert "``" not in text and ":func:" not in text
    for option in ("--seed", "--repeats"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(option))
        assert len(line.split()) > 2, f"{option} has no help: {line!r}"
    check = _help(["check", "--help"], capsys)
    assert "``" not in check
    assert re.search(r"--seed \w+\s+\S", check) and re.search(r"--repeats \w+\s+\S", check)


def test_seed_and_repeats_reach_the_check_wherever_given(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(cli, "check", lambda args: seen.append((args.seed, args.repeats)) or 0)
    for argv in (["--seed", "3", "check"], ["check", "--seed", "4", "--repeats", "2"], []):
        assert cli.main(argv) == 0
    assert seen == [(3, 9), (4, 2), (0, 9)]
    with pytest.raises(SystemExit):
        cli.main(["--repeats", "0"])
    assert "--repeats takes a positive integer, got '0'" in capsys.readouterr().err


def test_no_help_text_cites_a_document_outside_the_repository(capsys):
    for argv in (["--help"], ["check", "--help"], ["bench", "--help"]):
        text = _help(argv, capsys)
        assert "DESIGN.md" not in text and "/work/" not in text
        for doc in re.findall(r"\b[\w./-]+\.md\b", text):
            assert (ROOT / doc).exists() or doc == "README.md", f"{argv} cites {doc}"


def test_self_check_table_columns_are_aligned(capsys, monkeypatch):
    monkeypatch.setattr(cli, "median_ms", lambda *args, **kwargs: 1.0)  # the table only
    assert cli.main(["--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[:lines.index("")]
    header, rows = table[0], table[1:]
    assert len(rows) == 8
    for title in ("forward err", "grad err"):
        end = header.index(title) + len(title)  # right-aligned numbers end under the title
        for row in rows:
            assert row[end - 1] != " " and (len(row) == end or row[end] == " "), (header, row)
    start = header.index("direction")
    assert all(row[start:].split()[0] in ("forward", "reverse") for row in rows)


# -- metadata --------------------------------------------------------------------------
def test_license_file_exists_and_is_declared():
    # pyproject.toml read as text: tomllib is not in Python 3.10, which grufast supports.
    meta = (ROOT / "pyproject.toml").read_text()
    project = meta[meta.index("[project]"):meta.index("[project.optional-dependencies]")]
    assert re.search(r'^license = "BSD-3-Clause"$', project, re.M)
    assert re.search(r'^license-files = \[.*"LICENSE".*\]$', project, re.M)
    assert re.search(r'^authors = \[.*name = "the grufast developers"', project, re.M)
    assert re.search(r'^Homepage = "https://', meta, re.M)
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "2026, the grufast developers" in text


def test_installed_distribution_ships_the_license():
    # What `pip install .` put in site-packages (CI's case); a source-tree run (PYTHONPATH=src
    # or an editable install) has no built wheel to look into.
    from importlib import metadata

    try:
        dist = metadata.distribution("grufast")
    except metadata.PackageNotFoundError:
        pytest.skip("grufast is imported from a source tree and not installed")
    module = Path(grufast.__file__).resolve()
    files = dist.files or []
    if not any(Path(dist.locate_file(f)).resolve() == module for f in files):
        pytest.skip(f"the grufast imported ({module}) is not the installed distribution's")
    assert "LICENSE" in (dist.metadata.get_all("License-File") or [])
    shipped = [f for f in files if f.name == "LICENSE"]
    assert shipped and "BSD 3-Clause" in shipped[0].read_text()
    assert dist.metadata["Author"] == "the grufast developers"
    assert any(u.startswith("Homepage, https://") for u in dist.metadata.get_all("Project-URL"))
