"""A stand-in for MovieLens-1M with its exact layout and shape, for timing the real-data studies.

Writes OUT/ml-1m/{ratings.dat, users.dat, movies.dat} in the published ML-1M format
(`::`-separated, latin-1; docs/datasets.md) with the release's shape: 6,040 users with >= 20
ratings each, 3,706 rated movies (ids up to 3,952), 1,000,209 ratings, the 18 genres, zip codes
over the 10 US regions plus a few non-US ones. Ratings are random (Zipf item popularity,
log-normal user activity); they carry no real preference signal, so metrics measured on the
stand-in mean nothing. Use it only for wall times and for checking that a study runs end to end:

  python experiments/real_data/standin_ml1m.py --out /tmp/standin
  python launch.py --config experiments/real_data/ml1m_cross_region.py:cpu \
      --config.data.movielens.manual_dir=/tmp/standin --config.data.movielens.download=False \
      --workdir runs/ml1m_cross_region_standin

No MovieLens data is used or copied: every value is drawn from a seeded generator.
"""

import argparse
import os

import numpy as np

USERS, MOVIES, RATINGS, MAX_MOVIE_ID = 6040, 3706, 1_000_209, 3952
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")
AGES = (1, 18, 25, 35, 45, 50, 56)


def user_lengths(rng) -> np.ndarray:
  """Ratings per user: >= 20, log-normal tail (ML-1M: median ~96, max ~2,300), summing to RATINGS."""
  raw = np.exp(rng.normal(np.log(80.0), 1.0, USERS))
  lengths = 20 + raw / raw.sum() * (RATINGS - 20 * USERS)
  lengths = np.minimum(np.floor(lengths).astype(np.int64), MOVIES)
  deficit = RATINGS - lengths.sum()
  order = np.argsort(-lengths)
  i = 0
  while deficit > 0:  # top up the most active users (below the catalogue size) until the sum fits
    u = order[i % USERS]
    if lengths[u] < MOVIES:
      lengths[u] += 1
      deficit -= 1
    i += 1
  return lengths


def write(out: str, seed: int = 0) -> str:
  rng = np.random.default_rng(seed)
  folder = os.path.join(out, "ml-1m")
  os.makedirs(folder, exist_ok=True)
  movie_ids = np.sort(rng.choice(np.arange(1, MAX_MOVIE_ID + 1), MOVIES, replace=False))
  popularity = 1.0 / np.arange(1, MOVIES + 1) ** 0.9
  popularity = rng.permutation(popularity / popularity.sum())
  with open(os.path.join(folder, "movies.dat"), "w", encoding="latin-1") as f:
    for m in movie_ids:
      genres = rng.choice(GENRES, size=int(rng.integers(1, 4)), replace=False)
      f.write(f"{m}::Stand-in Movie {m} ({int(rng.integers(1919, 2001))})::{'|'.join(genres)}\n")
  with open(os.path.join(folder, "users.dat"), "w", encoding="latin-1") as f:
    for u in range(1, USERS + 1):
      zip_code = (f"T{int(rng.integers(0, 10))}A{int(rng.integers(0, 10))}B{int(rng.integers(0, 10))}"
                  if rng.random() < 0.01 else f"{int(rng.integers(0, 100000)):05d}")
      f.write(f"{u}::{'MF'[int(rng.integers(0, 2))]}::{AGES[int(rng.integers(0, len(AGES)))]}::"
              f"{int(rng.integers(0, 21))}::{zip_code}\n")
  lengths = user_lengths(rng)
  with open(os.path.join(folder, "ratings.dat"), "w", encoding="latin-1") as f:
    for u, n in enumerate(lengths, start=1):
      items = rng.choice(movie_ids, size=int(n), replace=False, p=popularity)
      start = int(rng.integers(956_703_932, 1_040_000_000))
      times = start + np.sort(rng.integers(0, 30_000_000, size=int(n)))
      stars = rng.integers(1, 6, size=int(n))
      f.write("".join(f"{u}::{m}::{r}::{t}\n" for m, r, t in zip(items, stars, times)))
  return folder


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="folder to write ml-1m/ into (the manual_dir to pass)")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  print(write(args.out, args.seed))


if __name__ == "__main__":
  main()
