"""A page of a style bank rendered on one face, each tile labelled with its index and name, so
that a style is picked by looking rather than by number (``styles --preview``, and the Style
Preview Grid node).

Pages hold :data:`PAGE_SIZE` styles and are counted from 0; the grid is :data:`COLUMNS` tiles
wide, so a full page is 4 x 4 and the last page has as many rows as it needs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

PAGE_SIZE = 16
COLUMNS = 4
TILE = 256  # px per tile: 16 tiles at the generator's 1024 px would make a 4096 px page


@dataclass
class StylePage:
    image: np.ndarray                # HxWx3 uint8 grid
    entries: list[tuple[int, str]]   # (bank index, name) of each tile, in reading order
    page: int
    pages: int
    demo: bool = False

    def listing(self) -> str:
        return "\n".join(f"{i}: {name}" for i, name in self.entries)


def page_count(n_styles: int, page_size: int = PAGE_SIZE) -> int:
    return max(1, math.ceil(n_styles / page_size))


def page_indices(n_styles: int, page: int, page_size: int = PAGE_SIZE) -> range:
    """Bank indices shown on ``page``; a page past the last names how many pages there are."""
    pages = page_count(n_styles, page_size)
    if n_styles == 0:
        raise InputError("the style bank is empty: there is nothing to preview")
    if not 0 <= int(page) < pages:
        raise InputError(f"page {page} does not exist: the bank has {n_styles} styles on {pages} page"
                         f"{'s' if pages != 1 else ''} of {page_size} (pages 0-{pages - 1})")
    start = int(page) * page_size
    return range(start, min(start + page_size, n_styles))


def label_tile(rgb: np.ndarray, text: str) -> np.ndarray:
    """``text`` in white on a black band along the tile's bottom (PIL's default font: no font
    file to ship or find)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(img)
    band = max(14, img.height // 14)
    draw.rectangle([0, img.height - band, img.width, img.height], fill=(0, 0, 0))
    max_chars = max(4, (img.width - 6) // 6)  # the default bitmap font is ~6 px a character
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "~"
    draw.text((3, img.height - band + (band - 11) // 2), text, fill=(255, 255, 255))
    return np.asarray(img)


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.LANCZOS))


def assemble(tiles: Sequence[np.ndarray], columns: int = COLUMNS) -> np.ndarray:
    rows = math.ceil(len(tiles) / columns)
    h, w = tiles[0].shape[:2]
    grid = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return grid


def load_face(path: str | Path, *, align_face: bool = False, detector: str = "dlib") -> np.ndarray:
    """The preview face as stylize reads its photo: an aligned square crop, or any photo with
    ``align_face`` (its largest face)."""
    if align_face:
        from .faces.align import align_file

        return align_file(path, size=256, face="largest", detector=detector)[0][0].image
    from .faces.io import load_image

    rgb = load_image(path)[0]
    h, w = rgb.shape[:2]
    if h != w:
        raise InputError(f"face '{path}' is {w}x{h}, not an aligned square face crop; pass --align-face to find "
                         f"and align the face")
    if h < 64:
        raise InputError(f"face '{path}' is only {w}x{h} pixels; the encoder needs a face crop of at least 64x64")
    return rgb


def render_page(models, face: np.ndarray, page: int, *, bank=None, batch: int = 4, tile: int = TILE,
                weights: Sequence[float] | None = None, progress: Callable[[int, int], None] | None = None) -> StylePage:
    """Render ``page`` of the bank on ``face`` (HxWx3 uint8, aligned).

    models: anything with ``encode(x, space)``, ``generate(instyle, exstyle_latent, weights=...)``,
    ``bank`` and ``demo`` (a :class:`~pastiche_core.pipeline.StylePipeline`, or the ComfyUI
    bundle, which loads its models through ComfyUI's memory manager).
    bank: another bank than ``models.bank`` (``styles --bank``).
    The styles are applied as ``stylize`` does by default (structure 0.75, colour 1, truncation
    0.75, stored noise), ``batch`` styles per generator call. progress(done, total) after each.
    """
    from .pipeline import resolve_weights, to_model_input, to_uint8

    bank = models.bank if bank is None else bank
    indices = page_indices(len(bank), page)
    layer_w = resolve_weights(weights, None, None)
    instyle = models.encode(to_model_input(face), "z+")
    if bank.n_latent != instyle.shape[1]:
        raise InputError(f"the bank's codes have {bank.n_latent} rows but the generator needs {instyle.shape[1]}: "
                         f"the bank belongs to a model of another size")
    batch = max(1, int(batch))
    tiles, entries = [], []
    chunks = [indices[i:i + batch] for i in range(0, len(indices), batch)]
    for done, chunk in enumerate(chunks, 1):
        codes = torch.stack([bank[i] for i in chunk]).reshape(len(chunk), *instyle.shape[1:])
        images, _, _ = models.generate(instyle.expand(len(chunk), -1, -1), codes, weights=layer_w)
        for i, img in zip(chunk, images):
            name = bank.name_of(i)
            tiles.append(label_tile(_resize(to_uint8(img), tile), f"{i}: {name}"))
            entries.append((i, name))
        if progress is not None:
            progress(done, len(chunks))
    grid = assemble(tiles)
    demo = bool(getattr(models, "demo", False))
    if demo:
        from .pipeline import draw_demo_caption

        grid = draw_demo_caption(grid)
    return StylePage(grid, entries, int(page), page_count(len(bank)), demo)
