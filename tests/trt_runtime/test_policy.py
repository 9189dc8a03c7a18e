import numpy as np
import pytest

from trt_runtime.errors import RuntimeInputError
from trt_runtime.policy import ExitPolicy, convergence_scores


@pytest.mark.parametrize(
    "kwargs",
    [
        {"theta": 0.0},
        {"theta": 1.01},
        {"theta": -1},
        {"theta": "0.9"},
        {"patience": 0},
        {"patience": 1.5},
        {"min_layer": 0},
        {"enabled": "false"},
        {"enabled": None},
    ],
)
def test_bad_policy_values_are_clear_errors(kwargs):
    with pytest.raises(RuntimeInputError):
        ExitPolicy(**kwargs)


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    p = ExitPolicy(theta=np.float32(0.9), patience=np.int64(1), min_layer=np.int32(3))
    assert type(p.theta) is float and type(p.patience) is int and type(p.min_layer) is int
    assert p.theta == float(np.float32(0.9)) and (p.patience, p.min_layer) == (1, 3)
    assert type(ExitPolicy(theta=np.float64(0.95)).theta) is float
    for bad in ({"theta": np.bool_(True)}, {"min_layer": np.float64(3.0)}, {"theta": np.float64("nan")}):
        with pytest.raises(RuntimeInputError):
            ExitPolicy(**bad)


def test_from_dict_names_unknown_keys():
    assert ExitPolicy.from_dict({"theta": 0.9, "min_layer": 2}) == ExitPolicy(theta=0.9, min_layer=2)
    with pytest.raises(RuntimeInputError, match="unknown exit-policy keys 'thetha'"):
        ExitPolicy.from_dict({"thetha": 0.9})


def test_rule_needs_min_layer_and_layer_above_patience():
    p = ExitPolicy(theta=0.9, patience=2, min_layer=1)
    scores = np.array([0.95, 0.5])
    assert not p.decide(2, scores).any()  # l > k fails at l = 2
    assert p.decide(3, scores).tolist() == [True, False]
    assert not ExitPolicy(theta=0.9, min_layer=3).decide(2, scores).any()
    assert not ExitPolicy(theta=0.9, enabled=False).decide(5, scores).any()


def test_simulate_matches_a_hand_built_case():
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=(5, 3, 8)).astype(np.float32)  # 4 layers, 3 samples
    pooled[3, 0] = pooled[2, 0] * 2.0  # sample 0 converges at layer 3 (cos = 1)
    pooled[2, 1] = pooled[1, 1]  # sample 1 would converge at layer 2, below min_layer
    pooled[4, 2] = pooled[3, 2]  # sample 2 converges at layer 4 = L: full depth anyway
    layers = ExitPolicy(theta=0.99, min_layer=3).simulate(pooled)
    assert layers.tolist() == [3, 4, 4]
    assert np.allclose(convergence_scores(pooled, 3, 1)[0], 1.0)
