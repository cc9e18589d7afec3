"""The trainer starts from a foreign checkpoint by pointing every HF-reading component at its materialized HF view.

(materialize_hf itself — the collective NeMo-2 -> HF export — is tested on the real NeMo-2 fixture in
tests/dist/test_foreign_load.py; here: which config paths follow it.)
"""

import ttrl_megatron.megatron.foreign.hf_view as hf_view
from ttrl_megatron.config import compose
from ttrl_megatron.trainer.builders import resolve_initial_policy


def _cfg(model_path, **extra):
    overrides = [f"actor_rollout_ref.model.path={model_path}", "algorithm.adv_estimator=gae"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return compose(overrides)


def test_foreign_checkpoint_redirects_model_tokenizer_and_critic(monkeypatch, tmp_path):
    calls = []

    def fake_materialize(path, load_format, out_dir, params_dtype):
        calls.append((path, load_format, out_dir))
        return out_dir

    monkeypatch.setattr(hf_view, "materialize_hf", fake_materialize)
    cfg = _cfg("/ckpts/nemo2_model", **{"actor_rollout_ref.model.load_format": "nemo2"})
    out = resolve_initial_policy(cfg, str(tmp_path))
    assert out == str(tmp_path / "initial_policy_hf")
    assert calls == [("/ckpts/nemo2_model", "nemo2", out)]
    assert cfg.actor_rollout_ref.model.path == out
    assert cfg.data.tokenizer == out  # inherited the model path, so it follows
    assert cfg.critic.model.path == out


def test_explicit_tokenizer_and_hf_folder_are_kept(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_view, "materialize_hf", lambda path, fmt, out_dir, params_dtype: out_dir)
    cfg = _cfg("/ckpts/mb", **{"data.tokenizer": "/tok"})
    resolve_initial_policy(cfg, str(tmp_path))
    assert cfg.data.tokenizer == "/tok"

    monkeypatch.setattr(hf_view, "materialize_hf", lambda path, fmt, out_dir, params_dtype: path)  # an HF folder
    cfg = _cfg("/models/hf")
    assert resolve_initial_policy(cfg, str(tmp_path)) == "/models/hf"
    assert cfg.actor_rollout_ref.model.path == cfg.data.tokenizer == "/models/hf"
