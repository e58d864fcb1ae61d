"""Reading data files that may be hostile or broken: one ``ValueError`` line naming the file.

* Images: Pillow refuses a picture of more than ``2 x Image.MAX_IMAGE_PIXELS`` pixels (about 179
  million: a small PNG can declare 20000 x 10000 pixels and need gigabytes once decoded) with
  ``DecompressionBombError``, and only warns between 1x and 2x; both are refused here, as are
  files Pillow cannot identify or decode (truncated, not an image, ``SyntaxError`` from some
  decoders).
* TSV files: Python's ``csv`` refuses a field longer than ``csv.field_size_limit()`` (131,072
  characters) with ``_csv.Error``; that, and any other ``csv.Error``, becomes one line naming the
  file and the line. A sentence of more than 131,072 characters is not a GLUE example.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Callable, TextIO

__all__ = ["load_image_checked", "read_tsv_rows"]


def load_image_checked(load: Callable[[Path, int], Any], path: Path, image_size: int) -> Any:
    """``load(path, image_size)`` with Pillow's bomb warning as an error and every decoding failure
    as one ``ValueError`` naming ``path``."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return load(path, image_size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"image {str(path)!r} is refused: {' '.join(str(exc).split())[:300]} (larger than "
                         f"{Image.MAX_IMAGE_PIXELS:,} pixels: a decompression bomb or not a training image); "
                         "remove it from the folder") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(f"image {str(path)!r} cannot be read ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}); remove or replace it") from None


def read_tsv_rows(handle: TextIO, path: Path) -> list[list[str]]:
    """All rows of a tab-separated file (no quoting), or one ``ValueError`` naming ``path`` and the line."""
    reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        return list(reader)
    except csv.Error as exc:
        raise ValueError(f"{str(path)!r} line {reader.line_num}: {exc} (csv.field_size_limit() = "
                         f"{csv.field_size_limit():,} characters); not a valid TSV data file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
