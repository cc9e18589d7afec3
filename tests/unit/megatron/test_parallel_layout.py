"""ParallelLayout: world/TP/PP arithmetic, model divisibility, rank coordinates, torchrun env parsing."""
import pytest

from ttrl_megatron.distributed import LayoutError, ParallelLayout, read_dist_env

PREFIX = "actor_rollout_ref.actor.megatron"


def test_from_world():
    assert ParallelLayout.from_world(8, tp=2, pp=2) == ParallelLayout(2, 2, 2)
    assert ParallelLayout.from_world(1).world_size == 1


def test_world_not_divisible_names_fields():
    with pytest.raises(LayoutError) as err:
        ParallelLayout.from_world(6, tp=4, pp=1, field_prefix=PREFIX)
    msg = str(err.value)
    assert f"{PREFIX}.tensor_model_parallel_size" in msg and f"{PREFIX}.pipeline_model_parallel_size" in msg
    assert "world size 6" in msg


@pytest.mark.parametrize("tp, pp, field", [(0, 1, "tensor_model_parallel_size"), (1, -2, "pipeline_model_parallel_size"),
                                           (1.5, 1, "tensor_model_parallel_size")])
def test_bad_sizes_named(tp, pp, field):
    with pytest.raises(LayoutError, match=field):
        ParallelLayout.from_world(4, tp=tp, pp=pp, field_prefix=PREFIX)


@pytest.mark.parametrize("layout, dims, needle", [
    (ParallelLayout(tp=8), dict(num_layers=2, num_attention_heads=12, num_query_groups=2),
     "tensor_model_parallel_size=8 does not divide num_attention_heads=12"),
    (ParallelLayout(tp=4), dict(num_layers=2, num_attention_heads=12, num_query_groups=2),
     "tensor_model_parallel_size=4 does not divide num_key_value_heads=2"),
    (ParallelLayout(pp=3), dict(num_layers=28, num_attention_heads=12, num_query_groups=2),
     "pipeline_model_parallel_size=3 does not divide num_hidden_layers=28"),
])
def test_model_divisibility(layout, dims, needle):
    with pytest.raises(LayoutError) as err:
        layout.validate_model(**dims, field_prefix=PREFIX)
    assert needle in str(err.value) and PREFIX in str(err.value)
    ParallelLayout().validate_model(**dims)  # TP=PP=1 always fits


def test_coords_tp_fastest_pp_slowest():
    layout = ParallelLayout(tp=2, pp=2, dp=2)
    assert [tuple(layout.coords(r).values()) for r in range(8)] == [
        (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]


def test_read_dist_env():
    env = read_dist_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_port) == (1, 2, 1, 1234)
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        read_dist_env({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "h"})
    with pytest.raises(RuntimeError, match="WORLD_SIZE='x'"):
        read_dist_env({"RANK": "0", "WORLD_SIZE": "x", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
