"""The fused-clip benchmark times equal work: its two clipped adamcore contenders leave
the same params, which clipping changed; it prints one row per contender, size and
thread count."""

import numpy as np

from adamcore.bench import fused_clip


def _params_after(name):
    contenders, params = fused_clip.adamcore_contenders(1000, np.random.default_rng(0))
    run, restore = contenders[name]
    restore()
    run()
    return params


def test_fused_and_unfused_clip_leave_the_same_params():
    fused = _params_after("fused clip+step")
    unfused = _params_after("clip, then step")
    unclipped = _params_after("step")
    for a, b in zip(fused, unfused):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    assert any(not np.array_equal(a, b) for a, b in zip(fused, unclipped))


def test_main_prints_a_row_per_contender(capsys):
    fused_clip.main(["--sizes", "4K", "--threads", "1", "2", "--rounds", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 4,096")]
    names = {line.split("|")[3].strip() for line in rows}
    assert {"step", "fused clip+step", "clip, then step"} <= names
    assert len(rows) == 2 * len(names)
    assert all(float(line.split("|")[5]) > 0 for line in rows)
