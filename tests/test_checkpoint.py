"""State that survives: state dicts (also torch.optim's) and checkpoint files.

A checkpoint load either applies completely or not at all: every failure case below
checks that the optimizer afterwards steps exactly like a twin that never tried.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile

import numpy as np
import pytest

import adamcore
from adamcore.optim import FORMAT_VERSION, CheckpointError
from adamcore.schedule import WarmupCosine
from _util import assert_same_bits, f32

SHAPES = [(16, 8), (32,), (2, 3, 16)]


def _params(seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [f32(rng.standard_normal(s)) for s in shapes]


def _grads(seed, steps, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [[f32(rng.standard_normal(s)) for s in shapes] for _ in range(steps)]


def _trained(cls=adamcore.AdamW, steps=5, seed=0, lr=1e-2, **kwargs):
    params = _params(seed)
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 3e-3}], lr=lr, **kwargs)
    for g in _grads(seed + 100, steps):
        opt.step(g)
    return opt, params


def _assert_same_future(opt, params, twin, twin_params, steps=4):
    """``opt`` and ``twin`` hold identical state: the same next steps give the same bits."""
    for g in _grads(777, steps):
        opt.step([x.copy() for x in g])
        twin.step([x.copy() for x in g])
    for a, b in zip(params, twin_params):
        assert_same_bits(a, b, "parameters after further steps")
    assert opt.state_dict()["param_groups"] == twin.state_dict()["param_groups"]
    for k, state in opt.state.items():
        assert state["step"] == twin.state[k]["step"]
        for name, value in state.items():
            if name != "step":
                assert_same_bits(value, twin.state[k][name], f"state {k} {name}")


@pytest.mark.parametrize("cls, kwargs", [
    (adamcore.AdamW, {"amsgrad": True}),
    (adamcore.Adam, {"weight_decay": 0.01}),
    (adamcore.Adagrad, {"lr_decay": 0.05}),
])
def test_save_then_load_resumes_bit_for_bit(tmp_path, cls, kwargs):
    opt, params = _trained(cls, **kwargs)
    path = tmp_path / "opt.npz"
    opt.save(path)
    saved_params = [p.copy() for p in params]
    # The original trains on, then rewinds: parameters by hand, optimizer state by load.
    for g in _grads(50, 3):
        opt.step(g)
    for p, saved in zip(params, saved_params):
        p[...] = saved
    opt.load(path)
    # A fresh optimizer with the saved parameter values and other hyperparameters.
    restored_params = [p.copy() for p in saved_params]
    restored = cls([{"params": restored_params[:2]}, {"params": restored_params[2:]}], lr=0.5)
    restored.load(path)
    assert restored.param_groups[1]["lr"] == 3e-3
    _assert_same_future(opt, params, restored, restored_params)


def test_schedule_survives_a_checkpoint(tmp_path):
    schedule = WarmupCosine(1e-2, warmup_steps=3, total_steps=20)
    opt, params = _trained(adamcore.Adam, lr=schedule)
    opt.param_groups[1]["lr"] = schedule
    opt.save(tmp_path / "opt.npz")
    twin_params = [p.copy() for p in params]
    twin = adamcore.Adam([{"params": twin_params[:2]}, {"params": twin_params[2:]}])
    twin.load(tmp_path / "opt.npz")
    assert twin.param_groups[0]["lr"] == schedule and twin.param_groups[0]["lr"] is not schedule
    _assert_same_future(opt, params, twin, twin_params)


def test_plain_callable_lr_cannot_be_saved(tmp_path):
    opt, _ = _trained(adamcore.Adam)
    opt.param_groups[0]["lr"] = lambda step: 1e-3
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['lr'\] is a callable"):
        opt.save(tmp_path / "opt.npz")
    assert os.listdir(tmp_path) == []


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    opt, params = _trained(adamcore.AdamW, steps=3)
    path = tmp_path / "opt.npz"
    opt.save(path)
    first = path.read_bytes()
    for g in _grads(5, 2):
        opt.step(g)

    def dies_halfway(member, array, **options):
        member.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt("simulated crash while writing")

    monkeypatch.setattr(np.lib.format, "write_array", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        opt.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == first
    assert os.listdir(tmp_path) == ["opt.npz"]  # the temporary file was removed
    other, _ = _trained(adamcore.AdamW, steps=0)
    other.load(path)
    assert other.state[0]["step"] == 3


def _state_after_failed_load(opt, params, path, error_match):
    """Loading ``path`` must raise and leave ``opt`` exactly as it was."""
    twin, twin_params = _trained(type(opt), steps=opt.state[0]["step"])
    for a, b in zip(params, twin_params):
        assert_same_bits(a, b, "twin setup")
    with pytest.raises(CheckpointError, match=error_match):
        opt.load(path)
    _assert_same_future(opt, params, twin, twin_params)


def test_truncated_file(tmp_path):
    source, _ = _trained(steps=7, seed=0)
    path = tmp_path / "opt.npz"
    source.save(path)
    blob = path.read_bytes()
    for cut in (len(blob) // 2, len(blob) - 10, 30):
        path.write_bytes(blob[:cut])
        opt, params = _trained()
        _state_after_failed_load(opt, params, path, "truncated or corrupted")


def test_corrupted_data_byte(tmp_path):
    source, _ = _trained(steps=7, seed=0)
    path = tmp_path / "opt.npz"
    source.save(path)
    blob = bytearray(path.read_bytes())
    # Flip a byte inside the first stored exp_avg's numbers: past the zip entry's local
    # header (30 bytes + name + extra field) and the .npy header (64 or 128 bytes).
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("exp_avg.npy"))
    start = info.header_offset
    name_len, extra_len = struct.unpack("<HH", blob[start + 26:start + 30])
    data = start + 30 + name_len + extra_len
    assert blob[data:data + 6] == b"\x93NUMPY"
    blob[data + 200] ^= 0x40
    path.write_bytes(bytes(blob))
    opt, params = _trained()
    _state_after_failed_load(opt, params, path, "corrupted")


def test_any_flipped_byte_is_caught_or_harmless(tmp_path):
    """Corruption anywhere either raises CheckpointError or (in bytes the format
    ignores, like timestamps) loads exactly the saved state: never different numbers."""
    source, _ = _trained(steps=3, seed=0)
    path = tmp_path / "opt.npz"
    source.save(path)
    blob = path.read_bytes()
    reference, _ = _trained(steps=0)
    reference.load(path)
    want = {k: {n: np.copy(x) for n, x in s.items()} for k, s in reference.state.items()}
    rng = np.random.default_rng(0)
    caught = 0
    for position in rng.choice(len(blob), size=60, replace=False):
        damaged = bytearray(blob)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        opt, _ = _trained(steps=0)
        try:
            opt.load(path)
        except CheckpointError:
            caught += 1
            continue
        for k, state in want.items():
            for n, x in state.items():
                if n == "step":
                    assert opt.state[k][n] == x
                else:
                    assert_same_bits(opt.state[k][n], x, f"byte {position} changed {n}")
    assert caught > 40


def _rewrite_meta(path, edit):
    with np.load(path) as archive:
        members = {name: archive[name] for name in archive.files}
    meta = json.loads(members["meta"].tobytes())
    edit(meta)
    members["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **members)


def test_newer_format_version(tmp_path):
    source, _ = _trained(steps=2)
    path = tmp_path / "opt.npz"
    source.save(path)
    _rewrite_meta(path, lambda meta: meta.update(version=FORMAT_VERSION + 1))
    opt, params = _trained()
    _state_after_failed_load(opt, params, path, f"newer adamcore .*version {FORMAT_VERSION + 1}")


def test_edited_metadata_fails_the_digest(tmp_path):
    source, _ = _trained(steps=2)
    path = tmp_path / "opt.npz"
    source.save(path)
    _rewrite_meta(path, lambda meta: meta["param_groups"][0].update(lr=1.0))
    opt, params = _trained()
    _state_after_failed_load(opt, params, path, "SHA-256")


def test_shapes_that_do_not_match(tmp_path):
    source, _ = _trained(steps=2)
    path = tmp_path / "opt.npz"
    source.save(path)
    opt = adamcore.AdamW([{"params": _params(0, [(8, 16), (32,)])}, {"params": _params(0, [(96,)])}])
    for g in _grads(3, 2, [(8, 16), (32,), (96,)]):
        opt.step(g)
    before = {k: {n: np.copy(x) for n, x in s.items()} for k, s in opt.state.items()}
    with pytest.raises(CheckpointError, match=r"exp_avg.* has shape \(16, 8\) but its parameter has shape \(8, 16\)"):
        opt.load(path)
    for k, state in before.items():
        for n, x in state.items():
            assert (opt.state[k][n] == x) if n == "step" else np.array_equal(opt.state[k][n], x)


def test_wrong_optimizer_family_and_layout(tmp_path):
    source, _ = _trained(adamcore.Adagrad, steps=2)
    path = tmp_path / "opt.npz"
    source.save(path)
    opt, params = _trained(adamcore.AdamW, steps=2)
    _state_after_failed_load(opt, params, path, "holds Adagrad state")
    # Adam-family checkpoints move between Adam, AdamW and AMSGrad (as in torch).
    adam, _ = _trained(adamcore.AMSGrad, steps=2)
    adam.save(path)
    opt.load(path)
    assert opt.param_groups[0]["amsgrad"] is True and not opt.param_groups[0]["decoupled_weight_decay"]
    single = adamcore.AdamW(_params(0))
    with pytest.raises(CheckpointError, match="2 param groups but the optimizer has 1"):
        single.load(path)


def test_files_that_are_not_checkpoints(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    for path, message in ((junk, "not a readable adamcore checkpoint"), (plain, "no metadata"),
                          (single, "not an .npz archive")):
        opt, params = _trained(steps=1)
        _state_after_failed_load(opt, params, path, message)
    with pytest.raises(FileNotFoundError):
        opt.load(tmp_path / "missing.npz")


def test_checkpoint_keeps_an_existing_files_mode(tmp_path):
    opt, _ = _trained(steps=1)
    path = tmp_path / "opt.npz"
    opt.save(path)
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    opt.save(path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_state_dict_layout_is_torchs():
    opt, _ = _trained(adamcore.AdamW, amsgrad=True)
    sd = opt.state_dict()
    assert sorted(sd) == ["param_groups", "state"]
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]
    assert sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert sd["param_groups"][0]["decoupled_weight_decay"] is True
    ada = adamcore.Adagrad(_params(1)).state_dict()
    assert sorted(ada["state"][2]) == ["step", "sum"]
    assert sorted(ada["param_groups"][0]) == ["convention", "eps", "initial_accumulator_value", "lr",
                                              "lr_decay", "maximize", "params", "tail_width",
                                              "weight_decay"]


def test_load_state_dict_rejects_bad_dtype_and_keeps_state():
    opt, params = _trained(steps=2)
    sd = opt.state_dict()
    bad = {"state": {k: dict(v) for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]}
    bad["state"][2] = dict(bad["state"][2], exp_avg_sq=bad["state"][2]["exp_avg_sq"].astype(np.float64))
    before = np.copy(opt.state[0]["exp_avg"])
    with pytest.raises(TypeError, match=r"state\[2\]\['exp_avg_sq'\] has dtype float64"):
        opt.load_state_dict(bad)
    assert_same_bits(opt.state[0]["exp_avg"], before, "state kept")
    with pytest.raises(ValueError, match="lacks"):
        opt.load_state_dict({"state": {0: {"step": 1, "exp_avg": before}}, "param_groups": sd["param_groups"]})


@pytest.mark.parametrize("name, torch_kwargs", [
    ("AdamW", {"amsgrad": True, "weight_decay": 0.1}),
    ("Adam", {"weight_decay": 0.01}),
    ("Adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1}),
])
def test_state_moves_between_numpy_optimizer_and_torch(name, torch_kwargs):
    """torch.optim.X(fused=True) -> adamcore.X -> adamcore.torch -> torch.optim.X, and
    every leg continues bit for bit."""
    torch = pytest.importorskip("torch")
    from adamcore.torch import to_torch_state_dict

    np_cls = getattr(adamcore, name)
    params = _params(9)
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    ref = getattr(torch.optim, name)(tensors, lr=1e-2, fused=True, **torch_kwargs)

    def torch_steps(opt, ts, grads):
        for g in grads:
            for t, x in zip(ts, g):
                t.grad = torch.from_numpy(x.copy())
            opt.step()

    torch_steps(ref, tensors, _grads(1, 4))
    # torch -> NumPy optimizer (tensors read without importing torch in adamcore.optim).
    mine_params = [t.detach().numpy().copy() for t in tensors]
    mine = np_cls(mine_params, lr=0.5)
    mine.load_state_dict(ref.state_dict())

    def continue_both(torch_opt, torch_params, seed, what):
        grads = _grads(seed, 3)
        torch_steps(torch_opt, torch_params, grads)
        for g in grads:
            mine.step(g)
        for a, t in zip(mine_params, torch_params):
            assert_same_bits(a, t.detach().numpy(), f"{name}: {what}")

    continue_both(ref, tensors, 2, "torch -> adamcore")
    # NumPy optimizer -> torch.optim.
    back_tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in mine_params]
    back = getattr(torch.optim, name)(back_tensors, fused=True)
    back.load_state_dict(to_torch_state_dict(mine.state_dict()))
    assert back.param_groups[0]["lr"] == 1e-2 and back.param_groups[0]["fused"] is True
    continue_both(back, back_tensors, 3, "adamcore -> torch")
    # The conversion copied: torch's buffers are not the NumPy optimizer's.
    first = next(iter(back.state.values()))
    buffer = "sum" if name == "Adagrad" else "exp_avg"
    assert not np.shares_memory(first[buffer].numpy(), mine.state[0][buffer])


def test_to_torch_state_dict_marks_groups_fused_and_copies():
    torch = pytest.importorskip("torch")
    from adamcore.torch import to_torch_state_dict

    opt, _ = _trained(adamcore.AdamW, steps=2)
    converted = to_torch_state_dict(opt.state_dict())
    assert [g["fused"] for g in converted["param_groups"]] == [True, True]
    assert to_torch_state_dict(opt.state_dict(), fused=None)["param_groups"][0]["fused"] is None
    step = converted["state"][0]["step"]
    assert step.dtype == torch.float32 and float(step) == 2.0
    assert torch.equal(converted["state"][1]["exp_avg"], torch.from_numpy(opt.state[1]["exp_avg"]))
    assert not np.shares_memory(converted["state"][1]["exp_avg"].numpy(), opt.state[1]["exp_avg"])
    opt.param_groups[0]["lr"] = WarmupCosine(1e-3, warmup_steps=1, total_steps=2)
    with pytest.raises(TypeError, match="callable"):
        to_torch_state_dict(opt.state_dict())


def test_save_and_load_hold_one_copy_of_the_state(tmp_path):
    """Streaming: saving needs no copy of the state and loading needs only the new state
    itself (plus a 16 MiB read buffer), measured with tracemalloc on 128 MiB of state."""
    import tracemalloc

    params = [np.full(16 << 20, 0.5, np.float32)]
    opt = adamcore.Adam(params)
    opt.step([np.full_like(params[0], 1e-3)])
    state_bytes = 2 * params[0].nbytes
    sample = opt.state[0]["exp_avg"][::1 << 20].copy()
    path = tmp_path / "big.npz"
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        opt.save(path)
        saving = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        opt.load(path)
        loading = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert saving < 0.25 * state_bytes, f"save held {saving / state_bytes:.2f}x the state"
    assert loading < 1.25 * state_bytes, f"load held {loading / state_bytes:.2f}x the state"
    assert opt.state[0]["step"] == 1
    assert_same_bits(opt.state[0]["exp_avg"][::1 << 20], sample, "loaded exp_avg")
