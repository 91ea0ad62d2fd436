"""An independent LSTM-Char-Small of Kim et al. 2016 in plain PyTorch: a cross-check of the recipe.

    python scripts/kim_reference.py --data .data/ptb --epochs 2 [--activation relu] [--projection]

It shares no code with this package (``torch.nn.LSTM``, ``nn.Conv1d``, its own character table
and batching): the characters of each word between begin/end-of-word marks, padded with a zero
vector to the longest word; tanh (or relu) convolutions of widths 1-6 with 25 x width filters,
max-pooled; one highway layer (relu, gate bias -2); 2 LSTM layers of 300 with dropout 0.5 between
them and before the full softmax; every weight U(-0.05, 0.05); the training text as 20
contiguous streams read in windows of 35 with the state carried; SGD at rate 1.0 on the loss
summed over a window's positions and averaged over rows, gradient norm clipped at 5; the rate
halved when validation perplexity improves by less than 1 after an epoch. ``--projection`` puts
a linear 525 -> 300 layer between the highway and the LSTM (ELMo's character encoder ends in
one). Each sentence ends in ``</S>``; validation is the same 20-stream reading of ``valid.txt``.

Prints the training perplexity every 200 steps and the validation perplexity after each epoch.
What it measured beside ``elmo-pretrain --preset ptb-char-small`` is in docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn


def read_words(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [w for line in f for w in line.split() + ["</S>"]]


class CharLM(nn.Module):
    def __init__(self, word_chars: torch.Tensor, n_chars: int, vocab_size: int, activation: str,
                 projection: bool, hidden: int = 300) -> None:
        super().__init__()
        self.word_chars = word_chars  # (V, L) character ids of every word, 0 = padding
        self.activation = torch.tanh if activation == "tanh" else torch.relu
        self.emb = nn.Embedding(n_chars, 15, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(15, 25 * w, w) for w in range(1, 7))
        self.features = sum(25 * w for w in range(1, 7))  # 525
        self.highway = nn.Linear(self.features, 2 * self.features)  # [transform; gate]
        self.proj = nn.Linear(self.features, hidden) if projection else None
        self.lstm = nn.LSTM(hidden if projection else self.features, hidden, 2, dropout=0.5)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(hidden, vocab_size)

    def words(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.emb(self.word_chars[ids]).transpose(1, 2)  # (N, 15, L)
        y = torch.cat([self.activation(conv(e).max(-1).values) for conv in self.convs], -1)
        transform, gate = self.highway(y).chunk(2, -1)
        gate = torch.sigmoid(gate)
        z = gate * torch.relu(transform) + (1 - gate) * y
        return self.proj(z) if self.proj is not None else z

    def forward(self, x: torch.Tensor, state):  # x (T, B) word ids
        distinct, inverse = torch.unique(x, return_inverse=True)
        out, state = self.lstm(self.words(distinct)[inverse], state)
        return self.out(self.drop(out)), state


def streams(words: list, index: dict, rows: int) -> torch.Tensor:
    ids = torch.tensor([index[w] for w in words])
    n = len(ids) // rows
    return ids[: n * rows].view(rows, n).t().contiguous()  # (n, rows): column r is stream r


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=".data/ptb", help="folder with train.txt and valid.txt")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--activation", choices=("tanh", "relu"), default="tanh")
    parser.add_argument("--projection", action="store_true", help="a linear 525 -> 300 before the LSTM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train = read_words(os.path.join(args.data, "train.txt"))
    valid = read_words(os.path.join(args.data, "valid.txt"))
    vocab = sorted(set(train))
    index = {w: i for i, w in enumerate(vocab)}
    unknown = sorted(set(valid) - set(index))
    if unknown:
        raise SystemExit(f"{args.data}/valid.txt has words not in train.txt (e.g. {unknown[0]!r}); "
                         "this script expects a closed vocabulary like PTB's")
    chars = {c: i + 3 for i, c in enumerate(sorted(set("".join(vocab))))}  # 0 pad, 1 bow, 2 eow
    word_chars = torch.zeros(len(vocab), max(map(len, vocab)) + 2, dtype=torch.long)
    for w, i in index.items():
        ids = [1] + [chars[c] for c in w] + [2]
        word_chars[i, : len(ids)] = torch.tensor(ids)
    model = CharLM(word_chars, len(chars) + 3, len(vocab), args.activation, args.projection)
    for p in model.parameters():
        nn.init.uniform_(p, -0.05, 0.05)
    with torch.no_grad():
        model.highway.bias[model.features :] -= 2  # Kim et al.'s highway gate bias
    train_ids, valid_ids = streams(train, index, 20), streams(valid, index, 20)
    loss_fn = nn.CrossEntropyLoss()
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters; {len(train):,} training "
          f"targets, {len(vocab):,} words", flush=True)

    def validation_perplexity() -> float:
        model.eval()
        state, total, count = None, 0.0, 0
        with torch.no_grad():
            for i in range(0, valid_ids.shape[0] - 1, 35):
                y = valid_ids[i + 1 : i + 36]
                logits, state = model(valid_ids[i : i + len(y)], state)
                total += loss_fn(logits.reshape(-1, len(vocab)), y.reshape(-1)).item() * y.numel()
                count += y.numel()
        return math.exp(total / count)

    start, lr, previous, history = time.time(), 1.0, None, []
    for epoch in range(1, args.epochs + 1):
        state, window_loss, steps = None, 0.0, 0
        model.train()
        for i in range(0, train_ids.shape[0] - 1 - 35, 35):
            x, y = train_ids[i : i + 35], train_ids[i + 1 : i + 36]
            if state is not None:
                state = tuple(s.detach() for s in state)
            logits, state = model(x, state)
            loss = loss_fn(logits.reshape(-1, len(vocab)), y.reshape(-1))
            model.zero_grad()
            (loss * 35).backward()  # summed over the window's positions, averaged over rows
            norm = nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            window_loss += loss.item()
            steps += 1
            if steps % 200 == 0:
                print(f"epoch {epoch} step {steps} train ppl {math.exp(window_loss / 200):.1f} "
                      f"grad norm {norm:.1f} {time.time() - start:.0f}s", flush=True)
                window_loss = 0.0
        ppl = validation_perplexity()
        if previous is not None and previous - ppl < 1:
            lr /= 2
        previous = ppl
        history.append(ppl)
        print(f"epoch {epoch} valid ppl {ppl:.1f} lr now {lr} {time.time() - start:.0f}s", flush=True)
        model.train()
    return history


if __name__ == "__main__":
    main()
