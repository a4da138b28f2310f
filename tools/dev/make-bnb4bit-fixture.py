#!/usr/bin/env python3
"""Builds tests/data/bnb4bit/, the fixture of tests/models/test_bnb4bit_reference.cpp.

Dev-only: it needs torch, transformers and bitsandbytes, which neither the build nor the tests
use; run it by hand and commit what it writes (tests/data/bnb4bit/README.md records the versions
that made the committed files). Everything runs on the CPU.

It makes a tiny random Llama, saves it in f32 (f32/), loads it twice through transformers'
BitsAndBytesConfig (NF4 with double quantization; FP4 without) and saves each 4-bit model with
save_pretrained (nf4-double-quant/, fp4/). reference.safetensors then holds what only
bitsandbytes and transformers can say about those files:
  input_ids                        i64 [T]          a fixed short token sequence
  <folder>/logits                  f32 [T, vocab]   transformers' logits of the 4-bit model
  <folder>/<module>.weight         f32 [out, in]    bitsandbytes.functional.dequantize_4bit
  <folder>/<module>.weight.absmax  f32 [blocks]     the block scales dequantize_4bit multiplies by
  edge/weight                      f32 [3, 72]      a weight made of boundary cases (make_edge_cases)
  edge/<nf4|fp4>/codes, /absmax    u8, f32          bitsandbytes.functional.quantize_4bit of it
The dims are chosen for the edge cases of the layout: intermediate 37 is odd, so down_proj rows
start mid-byte and mid-block, and gate/up/down hold 1184 elements, a partial last block of 32.
"""
import argparse
import json
import pathlib
import shutil

import bitsandbytes
import bitsandbytes.functional as bnb_functional
import safetensors
import torch
import transformers
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute, _get_4bit_quantize_bounds
from bitsandbytes.backends.utils import _get_4bit_code
from safetensors.torch import save_file
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

INPUT_IDS = [1, 17, 42, 5, 38, 47, 0, 31, 30, 7]
VARIANTS = [("nf4-double-quant", "nf4", True), ("fp4", "fp4", False)]


def make_original(folder: pathlib.Path) -> None:
    torch.manual_seed(20261207)
    config = LlamaConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=48, max_position_embeddings=64,
                         tie_word_embeddings=False, initializer_range=0.2, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        # Norm weights away from 1, so that a norm loaded wrongly changes the logits.
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)


def use_portable_cpu_kernels() -> None:
    """Routes bitsandbytes' CPU 4-bit dequantization through its own portable torch code.

    bitsandbytes 0.50.2's native CPU kernel (cdequantize_blockwise_cpu_{nf4,fp4}_fp32, taken on
    AVX-512 machines when in_features is a multiple of 16) finds a row's block scales at
    row * (in_features // blocksize) + column // blocksize, which is only right when blocksize
    divides in_features: for this model's 32-wide rows it multiplies by the wrong absmax. The
    portable path (backends/default/ops.py, what machines without AVX-512 and odd shapes run)
    indexes the flat blocks as the CUDA kernels do.
    """
    def portable(codes, absmax, blocksize, quant_type, shape, dtype):
        if codes.dtype != torch.uint8:
            codes = codes.view(torch.uint8)
        table = _get_4bit_code(quant_type, codes.device)
        return _dequantize_4bit_compute(codes.reshape(-1), absmax, table, blocksize, shape, dtype)

    torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", portable)


def block_scales(state) -> torch.Tensor:
    """The fp32 scales dequantize_4bit multiplies by, decoded as bitsandbytes.functional does."""
    if state.nested:
        return (bnb_functional.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
    return state.absmax.float()


def by_hand(weight, state) -> torch.Tensor:
    """code_values[code] * absmax[block] in plain torch: a check on bitsandbytes' own kernels."""
    packed = weight.data.view(torch.uint8).reshape(-1)
    count = state.shape[0] * state.shape[1]
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)[:count].long()
    scales = block_scales(state).repeat_interleave(state.blocksize)[:count]
    return (state.code.float()[codes] * scales).reshape(state.shape)


def quantize_with_transformers(original: pathlib.Path, folder: pathlib.Path, quant_type: str, double_quant: bool):
    settings = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=torch.float32)
    model = LlamaForCausalLM.from_pretrained(original, quantization_config=settings, dtype=torch.float32,
                                             device_map="cpu")
    model.eval()
    model.save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    return model


def linear_4bit_modules(model):
    return [(name, module) for name, module in model.named_modules() if isinstance(module, bitsandbytes.nn.Linear4bit)]


def record_reference(model, prefix: str, reference: dict) -> None:
    for name, module in linear_4bit_modules(model):
        # Keep forward() from repacking the weight into the AVX512-BF16 layout, whose scales are
        # bf16: the logits are to come from the checkpoint's own fp32 scales.
        module.support_avx512bf16_for_cpu = False
        state = module.weight.quant_state
        dequantized = bnb_functional.dequantize_4bit(module.weight.data, state)
        assert torch.equal(dequantized, by_hand(module.weight, state)), f"{prefix}/{name}: dequantize_4bit is off"
        reference[f"{prefix}/{name}.weight"] = dequantized.contiguous()
        reference[f"{prefix}/{name}.weight.absmax"] = block_scales(state).contiguous()
    with torch.no_grad():
        logits = model(torch.tensor([INPUT_IDS])).logits[0]
    reference[f"{prefix}/logits"] = logits.float().contiguous()


def stock_kernel_errors(model) -> int:
    """How many weight elements the native CPU kernel gets wrong (reported, not stored)."""
    wrong = 0
    for _, module in linear_4bit_modules(model):
        state = module.weight.quant_state
        wrong += int((bnb_functional.dequantize_4bit(module.weight.data, state) != by_hand(module.weight, state)).sum())
    return wrong


def make_edge_cases(reference: dict) -> None:
    """A weight whose quantization bitsandbytes decides at its boundaries.

    Block 0 has absmax 1, so its scaled values are its values: every midpoint bitsandbytes
    compares with (NF4's, and FP4's signed ones, as f32), zeros of both signs and tiny values
    of both signs. Block 1 is all zeros, block 2 random, and the partial last block (24 of 64)
    all zeros again.
    """
    nf4_bounds = _get_4bit_quantize_bounds("nf4", torch.device("cpu"))[0]
    fp4_bounds = _get_4bit_quantize_bounds("fp4", torch.device("cpu"))[0]
    first = torch.cat([torch.tensor([1.0]), nf4_bounds, fp4_bounds, torch.tensor([0.0, -0.0, 1e-4, -1e-4])])
    first = torch.cat([first, torch.zeros(64 - first.numel())])
    generator = torch.Generator().manual_seed(5)
    weight = torch.cat([first, torch.zeros(64), torch.randn(64, generator=generator), torch.zeros(24)]).reshape(3, 72)
    reference["edge/weight"] = weight.contiguous()
    for quant_type in ["nf4", "fp4"]:
        codes, state = bnb_functional.quantize_4bit(weight, blocksize=64, quant_type=quant_type)
        reference[f"edge/{quant_type}/codes"] = codes.contiguous()
        reference[f"edge/{quant_type}/absmax"] = state.absmax.float().contiguous()


def main() -> None:
    repo = pathlib.Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=repo / "tests" / "data" / "bnb4bit")
    args = parser.parse_args()
    out: pathlib.Path = args.out
    for child in ["f32", "reference.safetensors"] + [variant[0] for variant in VARIANTS]:
        path = out / child
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)

    make_original(out / "f32")
    reference = {"input_ids": torch.tensor(INPUT_IDS, dtype=torch.int64)}
    models = {folder: quantize_with_transformers(out / "f32", out / folder, quant_type, double_quant)
              for folder, quant_type, double_quant in VARIANTS}
    for folder, model in models.items():
        print(f"{folder}: the native CPU dequantize kernel is wrong on {stock_kernel_errors(model)} elements")
    use_portable_cpu_kernels()
    for folder, model in models.items():
        record_reference(model, folder, reference)
    make_edge_cases(reference)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "bitsandbytes": bitsandbytes.__version__, "safetensors": safetensors.__version__}
    save_file(reference, out / "reference.safetensors", metadata={"versions": json.dumps(versions)})
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
