"""Checks xrec's Flax BERT sentence encoder and WordPiece tokenizer against the original
implementation (Hugging Face transformers' BertModel and BertTokenizer, PyTorch).

  python experiments/text_encoder/verify.py --torch_python /path/to/python-with-torch-and-transformers \
      [--model /path/to/all-MiniLM-L6-v2] --out experiments/text_encoder/results

With --model (a sentence-transformers folder, e.g. all-MiniLM-L6-v2) both sides read those
weights; without it, a BertModel of all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads,
intermediate 1536) with random weights and a made-up vocabulary is written by transformers'
save_pretrained and read by both. Reference side (run under --torch_python): BertTokenizer ids and
mean-pooled, L2-normalised last hidden states, as sentence-transformers computes them. xrec side:
xrec.models.text_encoder.load. Writes verify.json: per sentence the token ids (equal or not) and
the cosine between the two vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SENTENCES = [
    "The Matrix (1999); genres: Action, Sci-Fi, Thriller",
    "Amélie (2001); genres: Comedy, Romance",
    "Lord of the Rings: The Fellowship of the Ring, The (2001)",
    "Wireless noise-cancelling headphones, 30h battery; brand: Acme; categories: Electronics, Audio",
    "bralo-kimu bralo-sate zeti-mowa",
    "中国 café naïve résumé — 100% cotton!",
    "",
]

WORDS = ("the of and a in to is for on with by from at as or an be this that it are was action comedy drama "
         "romance thriller sci fi matrix lord rings fellowship ring amelie wireless noise cancelling headphones "
         "battery brand acme categories electronics audio genres cotton cafe naive resume china bra lo ki mu sa te "
         "ze ti mo wa 19 99 20 01 30 100 h").split()


def _reference(folder: str, out: str) -> None:
  """Run under a python with torch and transformers: writes folder (when empty) and reference.json."""
  import torch
  from transformers import BertConfig, BertModel, BertTokenizer
  if not os.path.isfile(os.path.join(folder, "config.json")):
    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + sorted(
        set("##" + w[i:] for w in WORDS for i in range(1, len(w)))) + list("abcdefghijklmnopqrstuvwxyz0123456789") + \
        list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~—") + ["中", "国"]
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
      f.write("\n".join(dict.fromkeys(vocab)) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
  tokenizer = BertTokenizer(os.path.join(folder, "vocab.txt"), do_lower_case=True)
  model = BertModel.from_pretrained(folder).eval()
  rows = []
  for text in SENTENCES:
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
      states = model(**enc).last_hidden_state[0]
    pooled = states.mean(0)
    pooled = pooled / pooled.norm()
    rows.append({"text": text, "ids": enc["input_ids"][0].tolist(), "vector": pooled.tolist()})
  import transformers
  with open(out, "w") as f:
    json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "rows": rows}, f)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--torch_python", default=sys.executable)
  ap.add_argument("--model", default="")
  ap.add_argument("--out", default="experiments/text_encoder/results")
  ap.add_argument("--reference_only", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.reference_only:
    _reference(args.model, args.reference_only)
    return
  import numpy as np
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
  from xrec.models import text_encoder
  os.makedirs(args.out, exist_ok=True)
  folder = args.model or os.path.join(args.out, "random_minilm_shape")
  ref_path = os.path.join(args.out, "reference.json")
  subprocess.run([args.torch_python, os.path.abspath(__file__), "--model", folder, "--reference_only", ref_path],
                 check=True)
  with open(ref_path) as f:
    ref = json.load(f)
  encoder = text_encoder.load(folder)
  ours = encoder.embed([r["text"] for r in ref["rows"]])
  rows = []
  for r, vec in zip(ref["rows"], ours):
    ids = encoder.tokenizer.encode(r["text"])
    cosine = float(np.dot(vec, np.asarray(r["vector"])) / np.linalg.norm(vec) / np.linalg.norm(r["vector"]))
    rows.append({"text": r["text"], "same_ids": ids == r["ids"], "tokens": len(ids), "cosine": cosine})
  report = {"model": args.model or "random weights, all-MiniLM-L6-v2 shape (6 x 384, 12 heads, 1536)",
            "reference": {"transformers": ref["transformers"], "torch": ref["torch"]},
            "min_cosine": min(r["cosine"] for r in rows), "all_ids_equal": all(r["same_ids"] for r in rows),
            "rows": rows}
  with open(os.path.join(args.out, "verify.json"), "w") as f:
    json.dump(report, f, indent=2, ensure_ascii=False)
  for r in rows:
    print(f"ids {'equal' if r['same_ids'] else 'DIFFER'}  cosine {r['cosine']:.7f}  {r['text']!r}")
  print(f"min cosine {report['min_cosine']:.7f}; token ids equal for every sentence: {report['all_ids_equal']}")


if __name__ == "__main__":
  main()
