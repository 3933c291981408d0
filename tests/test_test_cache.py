"""The test suite's compilation-cache housekeeping (tests/conftest.py)."""

import os

from conftest import _empty_cache_if_large


def _fill(folder, sizes):
  for i, n in enumerate(sizes):
    with open(os.path.join(folder, f"entry{i}-cache"), "wb") as f:
      f.write(b"x" * n)


def test_cache_over_the_limit_is_emptied(tmp_path):
  _fill(tmp_path, [600, 500])
  _empty_cache_if_large(str(tmp_path), 1000)
  assert os.listdir(tmp_path) == []


def test_cache_within_the_limit_is_kept(tmp_path):
  _fill(tmp_path, [600, 400])
  (tmp_path / "sub").mkdir()  # folders are not counted or removed
  _empty_cache_if_large(str(tmp_path), 1000)
  assert sorted(os.listdir(tmp_path)) == ["entry0-cache", "entry1-cache", "sub"]


def test_missing_cache_folder_is_fine(tmp_path):
  _empty_cache_if_large(str(tmp_path / "absent"), 0)
