"""Tiny made-up data written in the exact layouts of the published files (no third-party data).

Imported by the other tests/test_data*.py files; holds no tests itself.
"""

import csv
import io
import os
import zipfile

from xrec.data import movielens

# user -> (gender, 1m age code, 100k age, 1m occupation code, 100k occupation, zip)
ZIPS = ["02139", "10001-1234", "14850", "30303", "48104", "55455", "60614", "80302", "94110", "98107-2117",
        "T8H1N", ""]
USERS = {str(u): ("MF"[u % 2], [1, 18, 25, 35, 45, 50, 56][u % 7], 18 + u, u % 21,
                  ["technician", "writer", "student", "other"][u % 4], ZIPS[u - 1]) for u in range(1, 13)}
# movie -> (title, genres); é is latin-1 in 1m/100k; a comma inside a title is quoted in CSV releases
MOVIES = {
    "1": ("Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    "2": ("Jumanji (1995)", ["Action", "Children's"]),
    "3": ("Amélie (2001)", ["Comedy", "Romance"]),
    "4": ("Lord, The (2001)", ["Drama"]),
    "5": ("Heat (1995)", ["Action", "Thriller"]),
    "6": ("Sabrina (1995)", ["Comedy", "Romance"]),
    "7": ("Casino (1995)", ["Drama", "Thriller"]),
    "8": ("Sense and Sensibility (1995)", ["Drama", "Romance"]),
    "9": ("Four Rooms (1995)", ["Thriller"]),
    "10": ("Money Train (1995)", ["Action", "Comedy"]),
}


def ratings():
  """(user, movie, rating 1-5, timestamp) in file order: grouped by user, not chronological within."""
  rows = []
  for u in range(1, 13):
    mine = []
    for k in range(6):
      movie = str((u + 3 * k) % 10 + 1)
      ts = 978300000 + 1000 * u + 10 * k
      mine.append((str(u), movie, 1 + (u * k + k) % 5, ts))
    if u % 2:  # odd users are written newest first, like real files out of order
      mine.reverse()
    rows += mine
  return rows


def _write(files: dict, root: str, folder: str, as_zip: bool) -> str:
  """files: member name -> bytes. Writes root/folder.zip (GroupLens layout) or root/folder/."""
  os.makedirs(root, exist_ok=True)
  if as_zip:
    path = os.path.join(root, folder + ".zip")
    with zipfile.ZipFile(path, "w") as z:
      z.writestr(folder + "/", b"")  # the archives carry their folder entry
      for name, data in files.items():
        z.writestr(f"{folder}/{name}", data)
    return path
  os.makedirs(os.path.join(root, folder), exist_ok=True)
  for name, data in files.items():
    with open(os.path.join(root, folder, name), "wb") as f:
      f.write(data)
  return os.path.join(root, folder)


def write_ml1m(root, as_zip=True, ratings_lines=None):
  r = ratings_lines if ratings_lines is not None else [f"{u}::{m}::{x}::{t}" for u, m, x, t in ratings()]
  users = [f"{u}::{g}::{age}::{occ}::{z}" for u, (g, age, _, occ, _, z) in USERS.items()]
  movies = [f"{m}::{title}::{'|'.join(genres)}" for m, (title, genres) in MOVIES.items()]
  files = {"ratings.dat": "\n".join(r) + "\n", "users.dat": "\n".join(users) + "\n",
           "movies.dat": "\n".join(movies) + "\n", "README": "made-up test data\n"}
  return _write({k: v.encode("latin-1") for k, v in files.items()}, root, "ml-1m", as_zip)


def write_ml100k(root, as_zip=True):
  data = [f"{u}\t{m}\t{x}\t{t}" for u, m, x, t in ratings()]
  users = [f"{u}|{age}|{g}|{occ}|{z}" for u, (g, _, age, _, occ, z) in USERS.items()]
  items = []
  for m, (title, genres) in MOVIES.items():
    flags = "|".join("1" if g in genres else "0" for g in movielens.ML100K_GENRES)
    items.append(f"{m}|{title}|01-Jan-{title[-5:-1]}||http://us.imdb.com/M/title-exact?x|{flags}")
  items.append("267|unknown||||" + "|".join(["1"] + ["0"] * 18))  # the real release has such an entry
  files = {"u.data": "\n".join(data) + "\n", "u.user": "\n".join(users) + "\n", "u.item": "\n".join(items) + "\n",
           "u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(movielens.ML100K_GENRES)),
           "u.occupation": "technician\nwriter\nstudent\nother\n"}
  return _write({k: v.encode("latin-1") for k, v in files.items()}, root, "ml-100k", as_zip)


def write_ml_csv(root, folder="ml-20m", as_zip=True):
  out = io.StringIO()
  w = csv.writer(out, lineterminator="\n")
  w.writerow(["userId", "movieId", "rating", "timestamp"])
  for u, m, x, t in ratings():
    w.writerow([u, m, f"{x - 0.5 if int(u) % 3 == 0 else float(x)}", t])  # half stars
  rating_csv = out.getvalue()
  out = io.StringIO()
  w = csv.writer(out, lineterminator="\n")
  w.writerow(["movieId", "title", "genres"])
  for m, (title, genres) in MOVIES.items():
    w.writerow([m, title, "|".join(genres) or "(no genres listed)"])
  w.writerow(["11", "Babylon 5 ", "(no genres listed)"])  # no year, trailing space, no genres
  movies_csv = out.getvalue()
  links = "movieId,imdbId,tmdbId\n" + "".join(f"{m},0{100000 + int(m)},{'' if m == '2' else 800 + int(m)}\n"
                                                for m in MOVIES)
  files = {"ratings.csv": rating_csv, "movies.csv": movies_csv, "links.csv": links,
           "tags.csv": "userId,movieId,tag,timestamp\n1,1,\"funny, smart\",978300001\n"}
  return _write({k: v.encode("utf-8") for k, v in files.items()}, root, folder, as_zip)


def files_cfg(**overrides):
  """A data.files ConfigDict (base defaults, raw keys unless `keys` is given: these tests read
  layouts) with `overrides`."""
  from xrec.defaults import base_config
  c = base_config().data.files
  c.key_scope = "shared"
  c.update(overrides)
  return c
