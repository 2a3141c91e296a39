"""BERT's WordPiece tokenizer in plain Python (the text side of xrec/models/text_encoder.py).

The algorithm of the original BERT release (Devlin et al., 2019; google-research/bert
`tokenization.py`, the one Hugging Face's `BertTokenizer` reimplements): clean the text (drop
control characters and U+FFFD, whitespace to spaces), put spaces around CJK characters, lower-case
and strip accents (NFD, drop combining marks) when the vocabulary is uncased, split on whitespace
and on every punctuation character, then split each word greedily into the longest vocabulary
pieces, continuation pieces prefixed `##`; a word with no split (or longer than 100 characters)
becomes `[UNK]`. `encode` adds `[CLS]` ... `[SEP]` and truncates to `max_len` tokens.
"""

from __future__ import annotations

import os
import unicodedata

import numpy as np

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def _is_whitespace(ch: str) -> bool:
  return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
  if ch in "\t\n\r":
    return False
  return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
  cp = ord(ch)  # ASCII non-letter, non-digit symbols count as punctuation, as in BERT
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
          or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
          or 0x2F800 <= cp <= 0x2FA1F)


class WordPiece:
  """vocab: token -> id (the order of vocab.txt). lower_case: the vocabulary is uncased."""

  def __init__(self, vocab: dict[str, int], lower_case: bool = True, max_len: int = 128):
    missing = [t for t in SPECIAL if t not in vocab]
    if missing:
      raise ValueError(f"the WordPiece vocabulary lacks the special tokens {missing} (it needs {list(SPECIAL)})")
    self.vocab, self.lower_case, self.max_len = vocab, lower_case, max_len
    self.pad_id, self.unk_id, self.cls_id, self.sep_id = (vocab[t] for t in SPECIAL)

  @classmethod
  def from_file(cls, path: str, lower_case: bool = True, max_len: int = 128) -> "WordPiece":
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no WordPiece vocabulary at {path} (a vocab.txt: one token per line)")
    with open(path, encoding="utf-8") as f:
      tokens = [line.rstrip("\n") for line in f]
    return cls({t: i for i, t in enumerate(tokens)}, lower_case, max_len)

  def _basic(self, text: str) -> list[str]:
    chars = []
    for ch in text:
      cp = ord(ch)
      if cp == 0 or cp == 0xFFFD or _is_control(ch):
        continue
      if _is_whitespace(ch):
        chars.append(" ")
      elif _is_cjk(cp):
        chars.extend((" ", ch, " "))
      else:
        chars.append(ch)
    words = []
    for word in "".join(chars).split():
      if self.lower_case:
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
      current = ""
      for ch in word:
        if _is_punctuation(ch):
          if current:
            words.append(current)
          words.append(ch)
          current = ""
        else:
          current += ch
      if current:
        words.append(current)
    return words

  def _pieces(self, word: str) -> list[int]:
    if len(word) > 100:
      return [self.unk_id]
    out, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        if piece in self.vocab:
          out.append(self.vocab[piece])
          break
        end -= 1
      if end == start:
        return [self.unk_id]
      start = end
    return out

  def tokenize(self, text: str) -> list[int]:
    """The ids of `text`'s pieces, without special tokens."""
    return [i for word in self._basic(text) for i in self._pieces(word)]

  def encode(self, text: str) -> list[int]:
    return [self.cls_id] + self.tokenize(text)[:self.max_len - 2] + [self.sep_id]

  def batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n, L], mask [n, L]) right-padded with [PAD] to the longest encoded text."""
    encoded = [self.encode(t) for t in texts]
    width = max(len(e) for e in encoded)
    ids = np.full((len(texts), width), self.pad_id, np.int32)
    mask = np.zeros((len(texts), width), np.int32)
    for i, e in enumerate(encoded):
      ids[i, :len(e)] = e
      mask[i, :len(e)] = 1
    return ids, mask
