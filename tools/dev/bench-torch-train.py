#!/usr/bin/env python3
"""Dev-only anchor for `lamina bench train --case llama_30m_step`: the same step in PyTorch.

HF transformers' own LlamaForCausalLM (SDPA attention) of bench_train_config's shape (dim 512,
8 layers, 8 heads / 4 kv heads, head_dim 64, ffn 1536, vocab 8192, untied head), batch 4 x 256
random tokens, loss = mean cross-entropy, backward, torch.optim.AdamW(lr 1e-4), zero_grad; one
warm-up, then steps until 3 s have passed; prints the median as a JSON line like lamina's.
`--precision bf16` wraps the forward in torch.autocast("cpu", dtype=torch.bfloat16), as a
PyTorch user would. Never part of the build or the tests: run it by hand beside `lamina bench
train` on an idle machine, alternating the two.

  python3 tools/dev/bench-torch-train.py --threads 2 --precision f32
"""
import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, 8192, (4, 256))
    targets = torch.randint(3, 8192, (4, 256))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, 8192), targets.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    samples = []
    start = time.perf_counter()
    while len(samples) < 3 or time.perf_counter() - start < args.seconds:
        t = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t)
    median = statistics.median(samples)
    print(json.dumps({"bench": "torch_train", "case": "llama_30m_step", "precision": args.precision,
                      "threads": args.threads, "torch": torch.__version__, "runs": len(samples),
                      "step_seconds": median, "tokens_per_s": 4 * 256 / median}))


if __name__ == "__main__":
    main()
