import numpy as np
import pytest

from export.schedule import Diffusion, alpha_bar, respaced_timesteps


def test_sqrt_schedule_matches_its_definition():
    abar = alpha_bar("sqrt", 2000)
    fn = lambda s: 1 - np.sqrt(s + 1e-4)
    assert abar[0] == pytest.approx(fn(1 / 2000) / fn(0), rel=1e-12)
    assert np.all(np.diff(abar) < 0) and 0 < abar[-1] < 1e-2


@pytest.mark.parametrize("steps", [1, 2, 20, 200, 2000])
def test_respacing_keeps_alpha_bar_at_kept_steps(steps):
    d = Diffusion.respaced("sqrt", 2000, steps)
    assert d.num_steps == steps
    np.testing.assert_allclose(d.alpha_bar, alpha_bar("sqrt", 2000)[d.timestep_map], rtol=1e-9)
    assert d.timestep_map[0] == 0 and (steps == 1 or d.timestep_map[-1] == 1999)


def test_respacing_rejects_out_of_range():
    with pytest.raises(ValueError):
        respaced_timesteps(2000, 0)
    with pytest.raises(ValueError):
        respaced_timesteps(2000, 2001)
