"""Write the template thumbnails beside the bundled workflows (``workflows/<name>.jpg``) and the pack
icon (``icon.png``).

ComfyUI serves a pack's ``workflows/`` folder at ``/api/workflow_templates/<pack>/`` and its
frontend shows ``<name>.jpg`` there as the picture of template ``<name>.json``
(app/custom_node_manager.py; the frontend's getTemplateThumbnailUrl, mediaSubtype "jpg").

No real DualStyleGAN weights can be shipped or run here (the demo weights only draw noise), so
the thumbnails show each workflow's bundled input images and what the workflow does, not a
stylised output. Run from the repository root: ``python tests/comfy_stub/make_thumbnails.py``.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
INPUTS = ROOT / "workflows" / "inputs"
SIZE = (512, 384)
BACKGROUND = (32, 34, 40)
ACCENT = (236, 140, 72)

#: workflow stem -> (input images, title, subtitle)
THUMBNAILS = {
    "1_portrait_bank_style": (["pastiche_photo.jpg"], "Portrait + bank style",
                              "align, stylise, paste back"),
    "2_style_from_exemplar": (["pastiche_photo.jpg", "pastiche_exemplar_cartoon.jpg"], "Style from an exemplar",
                              "your own artwork as the style"),
    "3_weight_grid": (["pastiche_face_aligned.jpg"], "Structure x colour grid", "3 x 3 layer weights"),
    "4_random_styles": (["pastiche_face_aligned.jpg"], "Random styles",
                        "sampler + interpolation"),
    "5_training_finetune": (["pastiche_exemplar_cartoon.jpg", "pastiche_face_aligned.jpg"], "Train a new style",
                            "six official training stages"),
    "6_face_detailer": (["pastiche_two_faces.jpg"], "Face detailer", "every face, masks, paste back"),
}


def _font(size: int):
    return ImageFont.load_default(size=size)


def thumbnail(images: list[str], title: str, subtitle: str) -> Image.Image:
    canvas = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    pics = [Image.open(INPUTS / name).convert("RGB") for name in images]
    gap, margin = 32, 16
    aspect = sum(p.width / p.height for p in pics)
    height = min(228, int((SIZE[0] - 2 * margin - gap * (len(pics) - 1)) / aspect))
    top = 28 + (228 - height) // 2
    pics = [p.resize((round(p.width * height / p.height), height), Image.LANCZOS) for p in pics]
    width = sum(p.width for p in pics) + gap * (len(pics) - 1)
    x = (SIZE[0] - width) // 2
    for i, p in enumerate(pics):
        canvas.paste(p, (x, top))
        if i:  # a "+" between a photo and its exemplar
            draw.text((x - gap // 2, top + height // 2), "+", fill=ACCENT, font=_font(28), anchor="mm")
        x += p.width + gap
    draw.text((SIZE[0] // 2, 292), title, fill=(245, 245, 245), font=_font(34), anchor="mm")
    draw.text((SIZE[0] // 2, 334), subtitle, fill=ACCENT, font=_font(22), anchor="mm")
    draw.text((SIZE[0] - 10, SIZE[1] - 8), "Pastiche · DualStyleGAN", fill=(150, 150, 160), font=_font(14),
              anchor="rd")
    return canvas


def icon(size: int = 256) -> Image.Image:
    """Two overlapping circles (a face and its style, DualStyleGAN's two paths) on a dark square."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    r = size * 0.30
    for cx, colour in ((size * 0.38, (94, 160, 220)), (size * 0.62, ACCENT)):
        draw.ellipse((cx - r, size / 2 - r, cx + r, size / 2 + r), outline=colour, width=max(4, size // 24))
    draw.text((size / 2, size / 2), "P", fill=(245, 245, 245), font=_font(int(size * 0.34)), anchor="mm")
    return img


def main() -> None:
    for stem, (images, title, subtitle) in THUMBNAILS.items():
        out = ROOT / "workflows" / f"{stem}.jpg"
        thumbnail(images, title, subtitle).save(out, quality=85, optimize=True)
        print(out, out.stat().st_size)
    out = ROOT / "icon.png"
    icon().save(out, optimize=True)
    print(out, out.stat().st_size)


if __name__ == "__main__":
    main()
