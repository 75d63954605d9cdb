"""The MLX implementation against PyTorch + PEFT on the real bundled model, and adapters moving
between the two through PEFT's own loader and saver."""

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlx_reptilora.crosscheck import check as crosscheck, torch_ref  # noqa: E402
from mlx_reptilora.model import adapters  # noqa: E402


@pytest.mark.slow
def test_two_episodes_agree_with_pytorch_peft_on_cpu(bundled_dir):
    torch.set_num_threads(1)  # one test file per core
    result = crosscheck.run(crosscheck.CrosscheckConfig(episodes=2, inner_steps=2, support=2, max_length=128,
                                                        device="cpu", quiet=True))
    assert result["lora_b_max_abs"] > 0  # the adapters really trained
    assert result["loss_max_rel_diff"] <= 1e-4, result["episodes"]
    assert result["adapters"]["rel_diff"] <= 1e-3
    # Entries whose near-zero gradient took opposite Adam sign-steps: a handful, not a pattern.
    assert result["adapters"]["sign_flips"] <= 1e-3 * result["adapters"]["elements"]


def test_adapters_round_trip_through_peft_itself(tiny, tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = adapters.LoraConfig(rank=4, alpha=8, dropout=0.0)
    adapters.attach(tiny.model, cfg)
    mx.random.seed(5)
    w = {k: v + 0.1 * mx.random.normal(v.shape) for k, v in adapters.get_weights(tiny.model).items()}
    adapters.set_weights(tiny.model, w)
    adapters.save(tiny.model, cfg, tmp_path / "mlx")
    adapters.to_peft(tmp_path / "mlx", tmp_path / "peft", base_model=str(tiny_dir))

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(hf, str(tmp_path / "peft"))
    got = torch_ref.get_adapters(model, list(w))
    for k in w:
        np.testing.assert_array_equal(got[k], np.array(w[k]))
    # Same function: PEFT's logits equal MLX's for the same tokens.
    ids = [[1, 504, 3612, 314, 253, 1345, 30]]
    tiny.model.eval()
    ours = np.array(tiny.model(mx.array(ids)))
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()

    model.save_pretrained(str(tmp_path / "peft_saved"))
    adapters.from_peft(tmp_path / "peft_saved", tmp_path / "back")
    back = adapters.read_weights(tmp_path / "back")
    assert set(back) == set(w) and all(mx.array_equal(back[k], w[k]) for k in w)
