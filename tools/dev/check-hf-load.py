#!/usr/bin/env python3
"""Checks that transformers and PEFT load what lamina's surgery commands write (issue 19).

Dev-only: it needs torch, transformers and peft, which neither the build, the tests nor CI use;
run it by hand (README's surgery section has the command and its last table). Everything runs on
the CPU, in a few minutes on SmolLM2-135M-Instruct.

From the GGUF file of tools/fetch-models.sh it makes an f32 Hugging Face folder (`lamina convert`,
the form the tests use), runs each writer on it into WORK, and loads every output in transformers
(AutoModelForCausalLM + AutoTokenizer; PeftModel for the adapters). Then, on one fixed prompt:
  - tokens: the prompt's ids from lamina's tokenizer (`lamina score --text`) equal AutoTokenizer's;
  - logprob diff: max |log p(token_t | tokens_<t)| difference over the prompt, lamina's
    (`lamina score --ids`, per-token log-probabilities, the closest lamina prints to logits)
    against log_softmax of transformers' logits;
  - greedy: the next GREEDY_TOKENS greedy ids of `lamina generate` equal transformers' generate.
An adapter's log-probabilities are lamina's of the adapter merged into its base (`lamina lora
merge`); its greedy ids are lamina's of base + adapter (`generate --adapter`). Prints a table.

  python3 tools/dev/check-hf-load.py WORK [--lamina build/lamina] [--gguf FILE]
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import warnings

import torch
import transformers
import peft

PROMPT = "The capital of France is Paris. The capital of Germany is"
VOCAB_PROMPT = "<|tool|> The capital of France is"  # extend-vocab: a new token, then old ones
GREEDY_TOKENS = 8
# Above this the two implementations disagree by more than f32 rounding (a bad writer changes
# log-probabilities by far more).
TOLERANCE = 1e-3


def lamina(binary, *args):
    """Runs lamina; returns stdout; stops the check with lamina's stderr on failure."""
    result = subprocess.run([binary, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"lamina {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def last_json_line(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def lamina_score(binary, model, ids):
    report = last_json_line(lamina(binary, "score", "--model", str(model), "--ids", " ".join(map(str, ids))))
    return report["logprobs"][1:]  # the first token has none


def lamina_tokens(binary, model, text):
    return last_json_line(lamina(binary, "score", "--model", str(model), "--text", text))["tokens"]


def lamina_greedy(binary, model, ids, adapter=None):
    args = ["generate", "--model", str(model), "--prompt-ids", " ".join(map(str, ids)),
            "--max-new-tokens", str(GREEDY_TOKENS), "--no-stop", "--output", "ids"]
    if adapter is not None:
        args += ["--adapter", str(adapter)]
    return [int(token) for token in lamina(binary, *args).split()][len(ids):]


def transformers_logprobs_and_greedy(model, ids):
    with torch.no_grad():
        input_ids = torch.tensor([ids])
        logits = model(input_ids).logits[0].double()
        logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, input_ids[0, 1:, None])[:, 0]
        generated = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                   max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, eos_token_id=None,
                                   pad_token_id=0)
    return logprobs.tolist(), generated[0, len(ids):].tolist()


def load_causal_lm(folder):
    """AutoModelForCausalLM in f32, with the warnings transformers printed (unused weights, ...)."""
    with warnings.catch_warnings(record=True):
        transformers.logging.set_verbosity_error()
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def check(binary, name, folder, prompt=PROMPT, adapter_of=None, lamina_scored=None, note="", base_logprobs=None):
    """One row: loads `folder` (a model, or with adapter_of=BASE an adapter on BASE) and compares.
    With base_logprobs (transformers' on the base), the row also says how far the output moved
    from the base: a check of an output that equals its base would prove little."""
    row = {"output": name, "loads": "no", "tokens": "-", "logprob": "-", "greedy": "-", "moved": "-", "note": note,
           "reference": None}
    try:
        tokenizer_folder = adapter_of if adapter_of is not None else folder
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder)
        if adapter_of is not None:
            model = peft.PeftModel.from_pretrained(load_causal_lm(adapter_of), folder).eval()
        else:
            model = load_causal_lm(folder)
    except Exception as error:  # the row says why, the other rows still run
        row["note"] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        return row
    row["loads"] = "yes"
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    model_for_lamina = lamina_scored if lamina_scored is not None else folder
    row["tokens"] = "equal" if lamina_tokens(binary, model_for_lamina, prompt) == ids else "DIFFER"
    reference, reference_greedy = transformers_logprobs_and_greedy(model, ids)
    row["reference"] = reference
    if base_logprobs is not None:
        row["moved"] = f"{max(abs(a - b) for a, b in zip(reference, base_logprobs)):.2e}"
    ours = lamina_score(binary, model_for_lamina, ids)
    row["logprob"] = max(abs(a - b) for a, b in zip(ours, reference))
    greedy = (lamina_greedy(binary, adapter_of, ids, adapter=folder) if adapter_of is not None
              else lamina_greedy(binary, folder, ids))
    row["greedy"] = "equal" if greedy == reference_greedy else f"DIFFER {greedy} vs {reference_greedy}"
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=pathlib.Path, help="a folder for the outputs (made; an existing one is reused)")
    parser.add_argument("--lamina", default="build/lamina", help="the lamina binary (default: build/lamina)")
    parser.add_argument("--gguf", default="models-cache/SmolLM2-135M-Instruct.Q4_1.gguf",
                        help="the model (tools/fetch-models.sh fetches it)")
    options = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    binary, work = options.lamina, options.work
    work.mkdir(parents=True, exist_ok=True)

    def fresh(name):
        path = work / name
        if path.exists():
            shutil.rmtree(path)
        return path

    base = fresh("base")
    lamina(binary, "convert", options.gguf, str(base), "--dtype", "f32")
    copy = fresh("base-copy")
    shutil.copytree(base, copy)
    mutated = fresh("mutate")
    lamina(binary, "mutate", "--model", str(base), "--sigma", "0.05", "--seed", "1", "--out", str(mutated))
    mutated2 = fresh("mutate2")
    lamina(binary, "mutate", "--model", str(base), "--sigma", "0.05", "--seed", "2", "--out", str(mutated2))
    linear = fresh("merge-linear")
    lamina(binary, "merge", "--method", "linear", "--models", f"{base},{copy}", "--out", str(linear))
    ties = fresh("merge-ties")
    lamina(binary, "merge", "--method", "ties", "--base", str(base), "--models", f"{mutated},{mutated2}",
           "--density", "0.5", "--out", str(ties))
    extracted = fresh("lora-extract")
    lamina(binary, "lora", "extract", "--base", str(base), "--tuned", str(mutated), "--rank", "8",
           "--out", str(extracted))
    extracted_merged = fresh("lora-extract-merged")
    lamina(binary, "lora", "merge", "--model", str(base), "--adapter", str(extracted), "--out", str(extracted_merged))
    expanded = fresh("expand")
    lamina(binary, "expand", "--model", str(base), "--insert-after", "3,20", "--out", str(expanded))
    vocab = fresh("extend-vocab")
    # Not --special: `lamina score --text` encodes text without parsing special tokens (user text is
    # never control tokens), where AutoTokenizer parses them; plain added tokens match in both.
    lamina(binary, "extend-vocab", "--model", str(base), "--add-tokens", "<|tool|>,<|obs|>", "--out", str(vocab))
    data = work / "chats.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                              for q, a in [("What is 2 + 2?", "4."), ("Name a colour.", "Blue."),
                                           ("Capital of Italy?", "Rome."), ("Say hi.", "Hi!")]) + "\n")
    run = fresh("sft-lora")
    lamina(binary, "train", "sft", "--model", str(base), "--data", str(data), "--steps", "2", "--batch-size", "2",
           "--seq-len", "64", "--lr", "1e-3", "--lora", "r=8,alpha=16,targets=all-linear", "--quiet",
           "--output", str(run))
    sft_merged = fresh("sft-lora-merged")
    lamina(binary, "lora", "merge", "--model", str(base), "--adapter", str(run / "model"), "--out", str(sft_merged))

    rows = [check(binary, "convert (GGUF -> f32 folder)", base)]
    moved = {"base_logprobs": rows[0]["reference"]}
    rows += [
        check(binary, "merge linear (two copies)", linear, **moved),
        check(binary, "merge ties (two mutants)", ties, **moved),
        check(binary, "mutate (sigma 0.05)", mutated, **moved),
        check(binary, "lora extract (rank 8, PEFT)", extracted, adapter_of=base, lamina_scored=extracted_merged, **moved),
        check(binary, "expand (LLaMA Pro, +2 blocks)", expanded, **moved),
        check(binary, "extend-vocab (+2 tokens)", vocab, prompt=VOCAB_PROMPT),
        check(binary, "train sft --lora (2 steps, PEFT)", run / "model", adapter_of=base, lamina_scored=sft_merged,
              **moved),
    ]
    # Control LLM's parallel blocks, where this binary has them: transformers runs the folder as a
    # plain Llama, ignoring the copies (unexpected keys), which before training is the same
    # function and after it is not: that row is expected to differ, and does not fail the check.
    expected_to_differ = set()
    if "--parallel" in lamina(binary, "expand", "--help"):
        parallel = fresh("expand-parallel")
        lamina(binary, "expand", "--model", str(base), "--parallel", "--layers", "3,20", "--out", str(parallel))
        rows.append(check(binary, "expand --parallel (Control LLM)", parallel, **moved,
                          note="transformers ignores the copies (unexpected keys)"))
        gated = fresh("expand-parallel-dynamic")
        lamina(binary, "expand", "--model", str(base), "--parallel", "--layers", "3,20", "--interpolation", "dynamic",
               "--out", str(gated))
        rows.append(check(binary, "expand --parallel, dynamic", gated, **moved,
                          note="the same, gates included"))
        parallel_run = fresh("parallel-sft")
        lamina(binary, "train", "sft", "--model", str(parallel), "--data", str(data), "--steps", "2", "--batch-size", "2",
               "--seq-len", "64", "--lr", "1e-3", "--trainable", "expanded", "--precision", "f32", "--quiet",
               "--output", str(parallel_run))  # f32: model/ keeps the originals' f32 bits (bf16 runs save in bf16)
        rows.append(check(binary, "expand --parallel, copies trained 2 steps", parallel_run / "model", **moved,
                          note="expected to differ: transformers cannot run Control LLM's copies"))
        expected_to_differ.add(rows[-1]["output"])

    print(f"lamina {binary}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"prompt: {PROMPT!r} (extend-vocab: {VOCAB_PROMPT!r}); greedy: {GREEDY_TOKENS} tokens\n")
    print("| output | loads | prompt ids | max abs logprob diff | greedy ids | moved from base | note |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for row in rows:
        diff = row["logprob"]
        text = f"{diff:.2e}" if isinstance(diff, float) else diff
        if row["output"] not in expected_to_differ:
            failed |= row["loads"] != "yes" or row["tokens"] != "equal" or row["greedy"] != "equal" or \
                not isinstance(diff, float) or diff > TOLERANCE
        print(f"| {row['output']} | {row['loads']} | {row['tokens']} | {text} | {row['greedy']} | {row['moved']} | "
              f"{row['note']} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
