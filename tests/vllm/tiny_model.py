"""Generate a tiny, randomly initialised Llama with a freshly trained tokenizer, for tests.

No model hub is reachable from tests, and the real engine must still load a real model: this
writes one into a directory that `vllm serve DIR` and vLLM in-process both load. Its text is
noise, but its shapes, tokenizer and chat template are real, so token counting, context
budgets, finish reasons and n completions can all be checked on it.

- Llama, hidden size 128, 2 heads (head_dim 64: vLLM's CPU attention rejects smaller heads),
  2 layers, float32 weights from a seeded generator.
- A byte-level BPE tokenizer trained on a few KB of generated prose and Python-like code
  (so any text, Japanese included, encodes), with special tokens for the chat roles.
- An explicit Jinja chat template with system, user and assistant turns; `--no-system-role`
  writes one that rejects system turns, like some published models do.
The same seed gives byte-identical files.

Runs in the vLLM test env (it needs torch, transformers and tokenizers):
    python tests/vllm/tiny_model.py OUT_DIR [--seed N] [--no-system-role]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
VOCAB_SIZE = 512
HIDDEN_SIZE = 128
HEADS = 2
LAYERS = 2
MAX_POSITIONS = 4096

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NO_SYSTEM_GUARD = (
    "{% if messages | selectattr('role', 'equalto', 'system') | list %}"
    "{{ raise_exception('System role not supported') }}"
    "{% endif %}"
)

WORDS = [
    *("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on"),
    *("be", "by", "at", "this", "from", "are", "or", "an", "which", "data", "model", "value"),
    *("result", "step", "number", "solve", "function", "return", "list", "file", "code"),
    *("test", "page", "answer"),
]
CODE_LINES = [
    "def {name}({arg}):",
    "    return {arg} + {num}",
    "    if {arg} > {num}:",
    "        {name}_{num} = [{arg} for {arg} in range({num})]",
    "class {Name}:",
    '    """{word} {word}."""',
    "    for {arg} in {name}:",
    "        print(f'{{{arg}}}')",
    "import {name}",
    "# {word} {word} {word}",
    "{name} = {{'{word}': {num}, '{arg}': ({num}, {num})}}",
]


def training_text(rng: random.Random, size: int = 6000) -> str:
    """A few KB of prose and code-like lines, drawn from the seeded generator."""
    parts: list[str] = []
    while sum(map(len, parts)) < size:
        if rng.random() < 0.5:
            parts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + ".\n")
        else:
            line = rng.choice(CODE_LINES)
            parts.append(
                line.format(
                    name=rng.choice(WORDS),
                    Name=rng.choice(WORDS).title(),
                    arg=rng.choice("xyzij"),
                    num=rng.randint(0, 99),
                    word=rng.choice(WORDS),
                )
                + "\n"
            )
    return "".join(parts)


def train_tokenizer(text: str) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return tokenizer


def build(out_dir: Path, seed: int, system_role: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    template = CHAT_TEMPLATE if system_role else NO_SYSTEM_GUARD + CHAT_TEMPLATE
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(training_text(rng)),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=2 * HIDDEN_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # Some loaders read the template from its own file rather than tokenizer_config.json.
    (out_dir / "chat_template.jinja").write_text(template, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-system-role", action="store_true")
    args = parser.parse_args(argv)
    build(args.out_dir, args.seed, system_role=not args.no_system_role)
    print(json.dumps({"model_dir": str(args.out_dir)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
