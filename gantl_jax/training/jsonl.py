"""JSON-lines logs (metrics.jsonl, eval.jsonl) that only ever hold whole lines, once per step."""
from __future__ import annotations

import json
import os
from gantl_jax.errors import LogError


def append(path: str, record: dict) -> None:
  """Appends one JSON line with a single write; if the write fails (a full disk), the file is cut
  back to its previous length, so it only ever holds whole lines."""
  data = (json.dumps(record) + "\n").encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    try:
      written = os.write(fd, data)
      if written != len(data):
        raise OSError(28, "short write")
    except OSError as e:
      os.ftruncate(fd, size)
      raise LogError(f"cannot append to {path}: {e.strerror or e}") from None
  finally:
    os.close(fd)


def trim(path: str, last_step: int) -> int:
  """Keeps the whole, parsable lines of a JSON-lines log whose ``step`` is at most ``last_step``
  (the step a run resumes from: later records are re-run and would appear twice; a torn last
  line from a crash is dropped). Rewrites the file atomically; returns the number dropped."""
  if not os.path.exists(path):
    return 0
  keep, dropped = [], 0
  with open(path, "rb") as f:
    for line in f:
      try:
        record = json.loads(line)
        ok = line.endswith(b"\n") and record.get("step", 0) <= last_step
      except ValueError:
        ok = False
      if ok:
        keep.append(line)
      else:
        dropped += 1
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return dropped


def read(path: str) -> list[dict]:
  """The whole, parsable records of a JSON-lines log, in order ([] when the file is missing)."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, "rb") as f:
    for line in f:
      try:
        if line.endswith(b"\n"):
          records.append(json.loads(line))
      except ValueError:
        pass  # a torn or corrupt line: the run re-logs its steps on resume
  return records
