from flows.sizing import GiB, estimate, min_gpus
from ttt_core import ModelConfig


def test_states_are_sixteen_bytes_per_parameter_sharded():
    params = ModelConfig.from_preset("bringup_1p3b").num_params()
    one, eight = estimate("bringup_1p3b", 1, 8, 2048), estimate("bringup_1p3b", 8, 8, 2048)
    assert one.params == params
    assert one.states_gib == params * 16 / GiB
    assert eight.states_gib == one.states_gib / 8
    assert eight.activations_gib == one.activations_gib  # activations are per GPU batch


def test_the_documented_gpu_counts():
    assert min_gpus("bringup_1p3b", 8, 2048).n_gpus == 1
    big = min_gpus("scale_47b", 1, 2048)
    assert big.n_gpus == 16 and round(big.total_gib, 1) == 48.5
    assert round(estimate("scale_47b", 8, 1, 2048).total_gib, 1) == 92.8
