"""SFT data: JSONL records -> (prompt, response) token pairs -> EOS-padded batches of similar lengths.

    {"messages": [{"role": "user", "content": "2 + 3 ="}, {"role": "assistant", "content": "5"}]}
    {"prompt": "2 + 3 =", "response": "5"}

With ``sft.template = "chat"`` (the default) both forms go through the tokenizer's chat template
(``dlm.data.chat``; a prompt/response record is one user message and the answer): the prompt is the conversation
before the last message with the assistant's turn opened, the response what the template adds for that last
message, which must be the assistant's (earlier assistant turns belong to the prompt and carry no loss). With
``"raw"`` a prompt/response record is used as it is. Prompt and response are tokenised apart, as ``dlm chat`` and
the Engine tokenise a prompt and then generate, and a shifted model's start token (BOS) leads the prompt.

Every response ends with ``<|endoftext|>`` (EOS) and is padded with more EOS to ``sft.pad_to`` tokens (default 64,
``dlm chat``'s default --gen-length; less where the row would outgrow the context), and a batch pads its shorter
rows with EOS to the longest (LLaDA's SFT): the padding belongs to the response, so a diffusion model learns to
fill the rest of a canvas with EOS, which is where the Engine stops. Batches are bucketed by length (examples of
similar lengths together, the batch order shuffled) so that little more than that is padding. There is no
attention padding: every row is real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm.data.chat import split_turn
from dlm.errors import DlmError


@dataclass(frozen=True)
class SFTExample:
    prompt: tuple[int, ...]  # the tokens before the response (a shifted model's start token first)
    response: tuple[int, ...]  # the response's tokens, ending with EOS

    def __len__(self) -> int:
        return len(self.prompt) + len(self.response)


@dataclass
class SFTBatch:
    """EOS-padded rows: ``tokens`` [B, L]; ``response`` [B, L] marks the response and its EOS padding (the loss
    of a diffusion model; the prompt is never masked); ``padding`` [B, L] the EOS added to fill the row (after the
    response's own EOS: an AR model is not trained on it, it stops at the first one)."""

    tokens: torch.Tensor
    response: torch.Tensor
    padding: torch.Tensor

    def to(self, device) -> "SFTBatch":
        return SFTBatch(self.tokens.to(device), self.response.to(device), self.padding.to(device))


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSONL file (blank lines skipped); one-line errors that name the line."""
    path = Path(path)
    if not path.exists():
        raise DlmError(f"SFT data file {path} not found; pass a JSONL file of {{'messages': [...]}} records")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DlmError(f"{path}:{number} is not valid JSON ({e})") from None
        if not isinstance(record, dict) or not ({"messages"} <= set(record) or {"prompt", "response"} <= set(record)):
            raise DlmError(
                f"{path}:{number}: a record must be {{'messages': [...]}} or {{'prompt': ..., 'response': ...}}"
            )
        records.append(record)
    if not records:
        raise DlmError(f"{path} holds no records")
    return records


def record_texts(record: dict, tok, template: str = "chat") -> tuple[str, str]:
    """(prompt, response) texts of one record under ``template`` ("chat" or "raw")."""
    if "messages" in record:
        if template == "raw":
            raise DlmError("a {'messages': [...]} record needs the chat template; drop --set sft.template=raw")
        messages = record["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise DlmError("messages must be a list of {'role': str, 'content': str}")
        return split_turn(tok, messages)
    prompt, response = record["prompt"], record["response"]
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DlmError("prompt and response must be strings")
    if template == "raw":
        return prompt, response
    return split_turn(tok, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])


def encode_examples(
    records: list[dict], tok, *, template: str = "chat", start: list[int] = (), max_len: int
) -> tuple[list[SFTExample], int]:
    """The token pairs of ``records`` that fit ``max_len`` tokens, and how many did not."""
    examples, dropped = [], 0
    for record in records:
        prompt, response = record_texts(record, tok, template)
        example = SFTExample(tuple(start) + tuple(tok.encode(prompt)), tuple(tok.encode(response)) + (tok.eos_id,))
        if len(example) > max_len:
            dropped += 1
        else:
            examples.append(example)
    if not examples:
        raise DlmError(f"no record fits the context of {max_len} tokens; shorten them or raise --set sft.max_len")
    return examples, dropped


def collate(examples: list[SFTExample], eos_id: int, pad_to: int = 0, max_len: int | None = None) -> SFTBatch:
    """Rows prompt + response, padded on the right with EOS to the longest, and every response to ``pad_to``
    tokens at least (within ``max_len`` tokens a row)."""
    width = max(max(len(e), len(e.prompt) + pad_to) for e in examples)
    width = width if max_len is None else max(min(width, max_len), max(len(e) for e in examples))
    tokens = torch.full((len(examples), width), eos_id, dtype=torch.long)
    response = torch.zeros((len(examples), width), dtype=torch.bool)
    padding = torch.zeros_like(response)
    for j, e in enumerate(examples):
        p, n = len(e.prompt), len(e)
        tokens[j, :n] = torch.tensor(e.prompt + e.response, dtype=torch.long)
        response[j, p:] = True
        padding[j, n:] = True
    return SFTBatch(tokens, response, padding)


class BucketLoader:
    """Batches of examples of similar lengths, reproducible from (seed, epoch) and resumable from its state.

    Each epoch: a permutation drawn from a generator seeded ``seed + epoch``, sorted (stably) by length and cut
    into batches of ``batch_size``, whose order is then shuffled by the same generator."""

    def __init__(self, examples: list[SFTExample], batch_size: int, seed: int, pad_to: int = 0, max_len=None):
        if batch_size <= 0:
            raise DlmError(f"batch_size must be positive, got {batch_size}")
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.pad_to, self.max_len = pad_to, max_len
        self.epoch, self.cursor = 0, 0
        self._batches = self._plan(0)

    def _plan(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = sorted(torch.randperm(len(self.examples), generator=g).tolist(), key=lambda i: len(self.examples[i]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def next_batch(self, eos_id: int) -> SFTBatch:
        if self.cursor == len(self._batches):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._batches = self._plan(self.epoch)
        indices = self._batches[self.cursor]
        self.cursor += 1
        return collate([self.examples[i] for i in indices], eos_id, self.pad_to, self.max_len)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._batches = self._plan(self.epoch)
