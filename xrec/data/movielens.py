"""MovieLens releases from the original GroupLens archives, parsed with the standard library.

`read_movielens(release, manual_dir, download, verify_checksum)` finds the
release (the archive `ml-1m.zip`, or the folder it extracts to, `ml-1m/`, in
`manual_dir`), downloads the archive there when it is absent and `download` is
on, checks its sha256, and returns an `InteractionTable` with ratings,
timestamps (seconds), user features (100k, 1m: gender, age, occupation, zip)
and item features (title, year, genres).

Layouts (see /work/shared/FORMATS.md):
  100k          u.data (tab) user item rating ts; u.item ('|', latin-1, 19 genre flags); u.user ('|')
  1m            ratings.dat / users.dat / movies.dat, '::'-separated, latin-1
  20m, 25m, latest-small   ratings.csv / movies.csv with header, UTF-8, quoted titles

User features: 100k age is the age in years and occupation a name ('technician');
1m age is the bucket code (1, 18, 25, 35, 45, 50, 56) and occupation a code 0-20.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import re
import shutil
import urllib.request
import zipfile

from xrec.data.interactions import InteractionTable, TableAccumulator, malformed

BASE_URL = "https://files.grouplens.org/datasets/movielens/"


@dataclasses.dataclass(frozen=True)
class Release:
  folder: str  # archive stem and the folder it extracts to
  sha256: str  # of the archive (same values as TFDS's url_checksums/movielens.txt)
  size: int  # bytes of the archive
  ratings_file: str  # the file whose presence marks an extracted folder
  read_files: tuple[str, ...] = ()  # every file of the release the reader reads (the first is ratings_file)

  @property
  def archive(self) -> str:
    return f"{self.folder}.zip"

  @property
  def url(self) -> str:
    return BASE_URL + self.archive


CSV_FILES = ("ratings.csv", "movies.csv", "links.csv")
RELEASES = {
    "100k": Release("ml-100k", "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", 4924029, "u.data",
                  ("u.data", "u.user", "u.item")),
    "1m": Release("ml-1m", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", 5917549,
                  "ratings.dat", ("ratings.dat", "users.dat", "movies.dat")),
    "20m": Release("ml-20m", "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3", 198702078,
                   "ratings.csv", CSV_FILES),
    "25m": Release("ml-25m", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa", 261978986,
                   "ratings.csv", CSV_FILES),
    # GroupLens regenerates 'latest' releases; this is the checksum of the copy TFDS pinned.
    "latest-small": Release("ml-latest-small",
                            "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", 978202,
                            "ratings.csv", CSV_FILES),
}

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")


def release_of(name: str) -> Release:
  if name not in RELEASES:
    raise ValueError(f"Unknown MovieLens release {name!r}; valid: {list(RELEASES)}")
  return RELEASES[name]


def year_of(title: str):
  """Release year from a title like 'Toy Story (1995)' (None when the title has none)."""
  m = _YEAR.search(title)
  return int(m.group(1)) if m else None


def sha256_of(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def missing_message(release_name: str, manual_dir: str, reason: str = "") -> str:
  r = release_of(release_name)
  msg = (f"MovieLens {release_name} not found. Put {r.archive} (download it from {r.url}, sha256 {r.sha256}) "
         f"into {manual_dir}{os.sep}, or extract it there so that "
         f"{os.path.join(manual_dir, r.folder, r.ratings_file)} exists (set data.movielens.manual_dir to use "
         "another folder).")
  return msg + (f" Download failed: {reason}" if reason else "")


def download(release: Release, dest: str, url: str | None = None) -> str:
  """Downloads the archive to `dest` (via a temporary file, so an interrupted download leaves nothing)."""
  os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
  tmp = dest + ".part"
  with urllib.request.urlopen(url or release.url, timeout=60) as response, open(tmp, "wb") as out:
    shutil.copyfileobj(response, out, 1 << 20)
  os.replace(tmp, dest)
  return dest


def locate(release_name: str, manual_dir: str, download_missing: bool = True, verify_checksum: bool = True) -> str:
  """Path of the release's archive or extracted folder in `manual_dir` (downloaded there if allowed)."""
  r = release_of(release_name)
  folder = os.path.join(manual_dir, r.folder)
  if os.path.isfile(os.path.join(folder, r.ratings_file)):
    return folder
  archive = os.path.join(manual_dir, r.archive)
  if not os.path.isfile(archive):
    if not download_missing:
      raise FileNotFoundError(missing_message(release_name, manual_dir) + " (Download is off: "
                              "data.movielens.download=False.)")
    try:
      download(r, archive)
    except OSError as e:  # offline machines end here: say where to put the file instead
      raise FileNotFoundError(missing_message(release_name, manual_dir, f"{r.url}: {e}")) from e
  if verify_checksum:
    digest = sha256_of(archive)
    if digest != r.sha256:
      raise ValueError(f"{archive}: sha256 {digest} does not match the published {r.sha256} of {r.url}. "
                       "Replace the file, or set data.movielens.verify_checksum=False for a modified copy.")
  return archive


class _Release:
  """Opens members of a release from its zip archive or extracted folder as text."""

  def __init__(self, path: str, folder: str):
    self.path, self.folder = path, folder
    self.zip = zipfile.ZipFile(path) if os.path.isfile(path) else None

  def name(self, member: str) -> str:
    return f"{self.path}:{self.folder}/{member}" if self.zip else os.path.join(self.path, member)

  def exists(self, member: str) -> bool:
    if self.zip:
      return f"{self.folder}/{member}" in self.zip.namelist()
    return os.path.isfile(os.path.join(self.path, member))

  def open(self, member: str, encoding: str):
    if self.zip:
      try:
        raw = self.zip.open(f"{self.folder}/{member}")
      except KeyError:
        raise FileNotFoundError(f"{self.path} has no member {self.folder}/{member}; is it the original "
                                f"GroupLens {self.folder}.zip?") from None
      return io.TextIOWrapper(raw, encoding=encoding, newline="")
    full = os.path.join(self.path, member)
    if not os.path.isfile(full):
      raise FileNotFoundError(f"{full} is missing from the extracted MovieLens folder {self.path}")
    return open(full, encoding=encoding, newline="")

  def close(self):
    if self.zip:
      self.zip.close()


def read_movielens(release_name: str, manual_dir: str, download_missing: bool = True,
                   verify_checksum: bool = True) -> InteractionTable:
  r = release_of(release_name)
  path = locate(release_name, manual_dir, download_missing, verify_checksum)
  files = _Release(path, r.folder)
  try:
    acc = TableAccumulator(f"movielens-{release_name}")
    if release_name == "100k":
      users, items = _read_100k(files, acc)
    elif release_name == "1m":
      users, items = _read_1m(files, acc)
    else:
      users, items = _read_csv_release(files, acc)
  finally:
    files.close()
  return acc.table(has_ratings=True, has_timestamps=True, user_features=users, item_features=items)


def _int(text, where, line_no, line, what):
  try:
    return int(text)
  except ValueError:
    raise malformed(where, line_no, f"{what} {text!r} is not an integer", line) from None


def _fields(files, filename: str, sep: str, layout: str):
  """(name, line_no, line, fields) of each non-blank line of a latin-1 release file.

  `layout` names the fields joined by `sep` (e.g. "UserID::MovieID::Rating::Timestamp");
  a line with another number of fields is an error naming file, line and layout.
  """
  name = files.name(filename)
  n_fields = len(layout.split(sep))
  with files.open(filename, "latin-1") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.rstrip("\r\n").split(sep)
      if len(fields) != n_fields:
        raise malformed(name, line_no, f"expected {layout} ({n_fields} {sep!r}-separated fields), got "
                        f"{len(fields)}", line)
      yield name, line_no, line, fields


def _read_100k(files, acc):
  for name, line_no, line, fields in _fields(files, "u.data", "\t", "user\titem\trating\ttimestamp"):
    acc.add(fields[0], fields[1], float(_int(fields[2], name, line_no, line, "rating")),
            _int(fields[3], name, line_no, line, "timestamp"))
  users = {}
  for name, line_no, line, fields in _fields(files, "u.user", "|", "id|age|gender|occupation|zip"):
    users[fields[0]] = {"gender": fields[2], "age": _int(fields[1], name, line_no, line, "age"),
                        "occupation": fields[3], "zip": fields[4]}
  items = {}
  layout = "id|title|release date|video release date|URL|" + "|".join(ML100K_GENRES)
  for name, line_no, line, fields in _fields(files, "u.item", "|", layout):
    flags = fields[5:]
    if any(v not in ("0", "1") for v in flags):
      raise malformed(name, line_no, "genre flags must be 0 or 1", line)
    title, released = fields[1], fields[2]
    year = year_of(title) or (int(released[-4:]) if released[-4:].isdigit() else None)
    items[fields[0]] = {"title": title, "year": year, "release_date": released,
                        "genres": [g for g, v in zip(ML100K_GENRES, flags) if v == "1"]}
  return users, items


def _read_1m(files, acc):
  for name, line_no, line, fields in _fields(files, "ratings.dat", "::", "UserID::MovieID::Rating::Timestamp"):
    acc.add(fields[0], fields[1], float(_int(fields[2], name, line_no, line, "rating")),
            _int(fields[3], name, line_no, line, "timestamp"))
  users = {}
  for name, line_no, line, fields in _fields(files, "users.dat", "::", "UserID::Gender::Age::Occupation::Zip-code"):
    users[fields[0]] = {"gender": fields[1], "age": _int(fields[2], name, line_no, line, "age"),
                        "occupation": _int(fields[3], name, line_no, line, "occupation"), "zip": fields[4]}
  items = {}
  for _, _, _, fields in _fields(files, "movies.dat", "::", "MovieID::Title::Genres"):
    items[fields[0]] = {"title": fields[1], "year": year_of(fields[1]),
                        "genres": [g for g in fields[2].split("|") if g]}
  return users, items


def _read_csv_release(files, acc):
  name = files.name("ratings.csv")
  with files.open("ratings.csv", "utf-8") as f:
    rows = csv.reader(f)
    header = next(rows, None)
    if header != ["userId", "movieId", "rating", "timestamp"]:
      raise malformed(name, 1, "expected the header userId,movieId,rating,timestamp", str(header))
    for line_no, row in enumerate(rows, 2):
      if not row:
        continue
      if len(row) != 4:
        raise malformed(name, line_no, f"expected 4 fields userId,movieId,rating,timestamp, got {len(row)}", str(row))
      try:
        rating = float(row[2])
      except ValueError:
        raise malformed(name, line_no, f"rating {row[2]!r} is not a number", str(row)) from None
      acc.add(row[0], row[1], rating, _int(row[3], name, line_no, str(row), "timestamp"))
  items = {}
  name = files.name("movies.csv")
  with files.open("movies.csv", "utf-8") as f:
    rows = csv.reader(f)
    header = next(rows, None)
    if header != ["movieId", "title", "genres"]:
      raise malformed(name, 1, "expected the header movieId,title,genres", str(header))
    for line_no, row in enumerate(rows, 2):
      if not row:
        continue
      if len(row) != 3:
        raise malformed(name, line_no, f"expected 3 fields movieId,title,genres, got {len(row)} (titles with "
                        "commas must be double-quoted)", str(row))
      title = row[1].strip()
      genres = [] if row[2] == "(no genres listed)" else [g for g in row[2].split("|") if g]
      items[row[0]] = {"title": title, "year": year_of(title), "genres": genres}
  if files.exists("links.csv"):
    with files.open("links.csv", "utf-8") as f:
      rows = csv.reader(f)
      next(rows, None)
      for row in rows:
        if len(row) == 3 and row[0] in items:
          items[row[0]].update(imdb_id=row[1], tmdb_id=row[2])
  return {}, items
