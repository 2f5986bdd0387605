"""AlignFace and PasteFaceBack: FFHQ alignment of every face in a batch, and the way back."""
from __future__ import annotations

from comfy_api.latest import io

from .common import (CATEGORY, PasticheNodeError, Progress, check_image, image_to_uint8, node_errors,
                     uint8_to_image, user_error)
from .types import FaceInfo, PasticheFaces

# stored workflows hold these values: new modes are only ever appended
FACE_MODES = ["largest", "index", "all", "list"]
FACE_ORDERS = ["largest-first", "left-to-right"]


def _check_face_list(text: str) -> list[int]:
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise PasticheNodeError(f"face_list '{text}' is not a list of face numbers such as 0,2")
    if len(set(parts)) != len(parts):
        raise PasticheNodeError(f"face_list '{text}' names a face twice")
    return [int(p) for p in parts]


def _detector_options() -> list[str]:
    from pastiche_core.faces.detect import detector_names

    return list(detector_names())


class AlignFace(io.ComfyNode):
    # No fingerprint_inputs: the output depends on the image tensor and the widgets only; the
    # detector weights are set up once (dlib's package files, the facexlib weights file) and a
    # missing one fails the run, which ComfyUI never caches.
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PasticheAlignFace", display_name="Align Face", category=f"{CATEGORY}/faces",
            description=("Finds faces in every photo of the batch and crops each one the way DualStyleGAN expects "
                         "(the official FFHQ alignment). Outputs the crops as an IMAGE batch, the face info that "
                         "Paste Face Back needs to put stylised crops back into the photos, and each face's mask in "
                         "its photo's frame (soft and hard) for detailer and inpainting graphs."),
            inputs=[
                io.Image.Input("image", tooltip="Photos (any size); every image of the batch is searched."),
                io.Combo.Input("detector", options=_detector_options(), default="dlib",
                               tooltip="Face detector. dlib: the official detector + 68 landmarks (needs the "
                                       "dlib-bin and face-recognition-models packages). facexlib: RetinaFace, needs its "
                                       "weights file (see the Pastiche README)."),
                io.Combo.Input("face", options=FACE_MODES, default="largest",
                               tooltip="Which faces per photo: the largest, the one at 'index', all, or the ones "
                                       "in 'face_list' (numbered by 'order': 0 = largest, or leftmost)."),
                io.Int.Input("index", default=0, min=0, max=63,
                             tooltip="With face = index: which face, by 'order' (0 = largest, or leftmost)."),
                io.Int.Input("size", default=256, min=64, max=1024, step=8,
                             tooltip="Crop size in pixels. 256 is what the encoder reads; the official 1024 "
                                     "crops are pooled to 256 anyway."),
                io.Boolean.Input("skip_missing", default=False,
                                 tooltip="Skip photos where no face is found instead of stopping with an error."),
                io.Boolean.Input("clip", default=False,
                                 tooltip="Treat the batch as the frames of a clip, in order: faces are tracked "
                                         "across frames (the chosen face stays the same person) and their alignment "
                                         "is smoothed over time, so pasted faces do not shake. Paste Face Back then "
                                         "uses the smoothed transforms."),
                io.Float.Input("smoothing", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="With clip on: how much the alignment is smoothed over time (0 = off, "
                                       "1 = strongest); a moving face is still followed."),
                io.Combo.Input("order", options=FACE_ORDERS, default="largest-first",
                               tooltip="How the faces of a photo are numbered (for index, list and the order of "
                                       "all): largest first, or from the left of the photo."),
                io.String.Input("face_list", default="0",
                                tooltip="With face = list: the face numbers to take, e.g. 0,2 (numbered by order); "
                                        "the crops come in this order."),
            ],
            outputs=[
                io.Image.Output(display_name="faces", tooltip="Aligned face crops [N, size, size, 3]."),
                PasticheFaces.Output(display_name="face_info",
                                     tooltip="Where each crop came from (for Paste Face Back)."),
                io.Mask.Output(display_name="face_mask",
                               tooltip="Each face's region in its photo's frame [N, H, W], soft: Paste Face Back's "
                                       "default blend mask (ellipse, feather 0.03). For detailer and inpaint nodes."),
                io.Mask.Output(display_name="face_mask_hard",
                               tooltip="The same regions as 0/1 masks [N, H, W], without the feather."),
            ],
        )

    @classmethod
    def validate_inputs(cls, face_list: str | None = None) -> bool | str:
        # only the typed list is named: the other inputs keep ComfyUI's own option checks
        if face_list is None or not str(face_list).strip():
            return True
        try:
            _check_face_list(face_list)
        except PasticheNodeError as exc:
            return str(exc)
        return True

    @classmethod
    @node_errors("Align Face (FFHQ)")
    def execute(cls, image, detector: str = "dlib", face: str = "largest", index: int = 0, size: int = 256,
                skip_missing: bool = False, clip: bool = False, smoothing: float = 0.5,
                order: str = "largest-first", face_list: str = "0") -> io.NodeOutput:
        from pastiche_core.errors import PasticheError
        from pastiche_core.faces.align import align_faces
        from pastiche_core.faces.detect import NoFaceError
        from pastiche_core.faces.paste import face_masks
        import torch

        image = check_image(image, "image")
        photos = image_to_uint8(image)
        if face == "index":
            choice = int(index)
        elif face == "list":
            choice = _check_face_list(face_list)
        else:
            choice = face
        if clip:
            if face == "list":
                raise PasticheNodeError("clip mode follows one face (largest or index) or all faces; a face list "
                                        "is for single photos")
            return cls._execute_clip(photos, detector, choice, int(size), bool(skip_missing), float(smoothing))
        progress = Progress(len(photos))
        crops, faces, skipped = [], [], []
        for b, rgb in enumerate(photos):
            h, w = rgb.shape[:2]
            what = f"image {b + 1} of the batch" if len(photos) > 1 else "the image"
            try:
                aligned = align_faces(rgb, detector=detector, size=int(size), face=choice, order=order, what=what)
            except NoFaceError as exc:
                if skip_missing:
                    skipped.append(b)
                    progress.step()
                    continue
                raise PasticheNodeError(f"No face found in {what} ({w}x{h}): {exc}. Try another detector, a larger "
                                        f"or more frontal photo, or turn on skip_missing.") from None
            except PasticheError as exc:
                raise user_error(exc, f"Align Face, {what}") from None
            for af in aligned:
                crops.append(af.image)
                faces.append((b, af))
            progress.step()
        if not crops:
            raise PasticheNodeError(f"No face found in any of the {len(photos)} images (detector {detector}).")
        info = FaceInfo(image_sizes=[p.shape[:2] for p in photos], faces=faces, crop_size=int(size))
        # a batch shares one frame; the masks follow the crops, one per face
        soft, hard = face_masks(photos[0].shape[:2], [af for _b, af in faces])
        return io.NodeOutput(uint8_to_image(crops), info, torch.from_numpy(soft), torch.from_numpy(hard))

    @classmethod
    def _execute_clip(cls, photos, detector: str, choice, size: int, skip_missing: bool,
                      smoothing: float) -> io.NodeOutput:
        """The batch as a clip: tracked faces (crops per frame in track-id order), smoothed transforms."""
        from pastiche_core.errors import PasticheError
        from pastiche_core.faces.paste import face_masks
        from pastiche_core.faces.track import FaceTracker
        import torch

        if len({p.shape for p in photos}) > 1:
            raise PasticheNodeError("clip mode needs frames of one size; the batch mixes "
                                    f"{sorted({p.shape[1::-1] for p in photos})}")
        try:
            tracker = FaceTracker(detector, face=choice, smoothing=smoothing)
        except PasticheError as exc:
            raise PasticheNodeError(f"Align Face: {exc}") from None
        progress = Progress(len(photos))
        crops, faces = [], []
        for b, rgb in enumerate(photos):
            try:
                aligned = tracker.align(rgb, size=size)
            except PasticheError as exc:
                raise PasticheNodeError(f"Align Face, frame {b + 1}: {exc}") from None
            if not aligned and not skip_missing:
                h, w = rgb.shape[:2]
                raise PasticheNodeError(f"No face found in frame {b + 1} of the clip ({w}x{h}, detector {detector}); "
                                        "turn on skip_missing to leave such frames unchanged.")
            for af in aligned:
                crops.append(af.image)
                faces.append((b, af))
            progress.step()
        if not crops:
            raise PasticheNodeError(f"No face found in any of the {len(photos)} frames (detector {detector}).")
        info = FaceInfo(image_sizes=[p.shape[:2] for p in photos], faces=faces, crop_size=size)
        soft, hard = face_masks(photos[0].shape[:2], [af for _b, af in faces])  # frames share one size
        return io.NodeOutput(uint8_to_image(crops), info, torch.from_numpy(soft), torch.from_numpy(hard))


class PasteFaceBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PastichePasteFaceBack", display_name="Paste Face Back", category=f"{CATEGORY}/faces",
            description=("Puts stylised face crops back into the original photos: each crop is warped with the "
                         "inverse of its alignment and blended through a feathered face-shaped mask; pixels outside "
                         "the masks are unchanged. With Align Face in clip mode the smoothed (tracked) alignment is "
                         "used, so the faces do not shake from frame to frame."),
            inputs=[
                io.Image.Input("image", tooltip="The original photos (the batch that went into Align Face)."),
                io.Image.Input("faces", tooltip="The stylised crops, one per aligned face, in Align Face's order "
                                                "(any square size); or several renders of a single aligned face, "
                                                "giving one photo per render."),
                PasticheFaces.Input("face_info", tooltip="Face info from the same Align Face node."),
                io.Float.Input("feather", default=0.03, min=0.0, max=0.2, step=0.005,
                               tooltip="Softness of the mask edge, as a fraction of the crop size."),
                io.Combo.Input("mask", options=["ellipse", "landmarks"], default="ellipse",
                               tooltip="Mask shape: an ellipse over the face, or the face outline from the 68 "
                                       "landmarks (dlib only)."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The photos with the stylised faces pasted in.")],
        )

    @classmethod
    @node_errors("Paste Face Back")
    def execute(cls, image, faces, face_info: FaceInfo, feather: float = 0.03, mask: str = "ellipse") -> io.NodeOutput:
        from pastiche_core.errors import PasticheError
        from pastiche_core.faces.paste import paste_faces

        if not isinstance(face_info, FaceInfo):
            raise PasticheNodeError("face_info must come from an Align Face node")
        image, faces = check_image(image, "image"), check_image(faces, "faces")
        photos = image_to_uint8(image)
        if [p.shape[:2] for p in photos] != [tuple(s) for s in face_info.image_sizes]:
            raise PasticheNodeError(f"image does not match face_info: got {len(photos)} photos of sizes "
                                    f"{[p.shape[1::-1] for p in photos]}, the faces were aligned in "
                                    f"{len(face_info.image_sizes)} photos of sizes "
                                    f"{[tuple(s)[::-1] for s in face_info.image_sizes]}; connect the photos that went into Align Face")
        # several renders of a single face (a style grid, say): one photo per render
        renders_of_one = len(face_info.faces) == 1 and faces.shape[0] > 1
        if faces.shape[0] != len(face_info.faces) and not renders_of_one:
            raise PasticheNodeError(f"got {faces.shape[0]} face crops for {len(face_info.faces)} aligned faces; "
                                    "stylise each aligned face once (one style per face) before pasting back, or "
                                    "align a single face to paste several renders of it")
        if faces.shape[1] != faces.shape[2]:
            raise PasticheNodeError(f"face crops must be square, got {faces.shape[2]}x{faces.shape[1]}")
        crops = faces.numpy()
        if renders_of_one:
            b, af = face_info.faces[0]
            progress = Progress(len(crops))
            out = []
            for i, crop in enumerate(crops):
                try:
                    out.append(paste_faces(photos[b], [crop], [af], mask=mask, feather=float(feather),
                                           value_range=(0.0, 1.0)))
                except PasticheError as exc:
                    raise PasticheNodeError(f"Paste Face Back, render {i + 1}: {exc}") from None
                progress.step()
            return io.NodeOutput(uint8_to_image(out))
        progress = Progress(len(photos))
        out = []
        for b, rgb in enumerate(photos):
            idx = [i for i, (bi, _) in enumerate(face_info.faces) if bi == b]
            if idx:
                try:
                    rgb = paste_faces(rgb, [crops[i] for i in idx], [face_info.faces[i][1] for i in idx],
                                      mask=mask, feather=float(feather), value_range=(0.0, 1.0))
                except PasticheError as exc:
                    raise user_error(exc, f"Paste Face Back, image {b + 1}") from None
            out.append(rgb)
            progress.step()
        return io.NodeOutput(uint8_to_image(out))
