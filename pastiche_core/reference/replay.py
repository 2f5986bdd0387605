"""Replay an official generator fixture case through our API.

A case file (``.npz``) holds ``in_*`` inputs, expected ``out_*`` outputs and ``meta_json``: the
case name, its size and ``official_kwargs`` (the keyword arguments of the official generator
call). The official call's preprocessing (mapping a z+ exemplar code to w+, the preserve-colour
row swap, the truncation centre of ``sg_a``) is described in words in ``meta["call"]``; it is
reproduced here from the inputs present and that text. The same case names mean the same call
at every resolution, so a replay keyed on inputs + kwargs works at 256 and 1024 alike.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import PasticheError
from ..models import DualStyleGAN, Generator
from .fixture_weights import fixture_state_dict

# Calls that official_kwargs leave empty (dsg_f: "same call as dsg_b_transfer_default plus
# return_feat=True").
_TRANSFER_DEFAULT = {"input_is_latent": False, "z_plus_latent": True, "truncation": 0.7, "truncation_latent": 0,
                     "use_res": True, "interp_weights": [0.75] * 7 + [1.0] * 11, "randomize_noise": False}


def fixture_model(kind: str, size: int, manifest: str | Path | None = None) -> torch.nn.Module:
    """A model of ``kind`` ("dualstylegan" / "stylegan2") at ``size`` with the deterministic
    fixture weights (``fixture_weights.fixture_state_dict`` over its state-dict keys and shapes,
    which are the official ones). ``manifest``: an official manifest JSON to check keys against."""
    with torch.device("meta"):  # no random init: every tensor comes from the recipe below
        model = DualStyleGAN(size) if kind == "dualstylegan" else Generator(size)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if manifest is not None:
        listed = {t["key"]: tuple(t["shape"]) for t in json.loads(Path(manifest).read_text())["tensors"]}
        if listed != shapes:
            diff = sorted(set(listed.items()) ^ set(shapes.items()))[:5]
            raise PasticheError(f"our {kind} {size} state dict differs from manifest {manifest}: {diff}")
    state = fixture_state_dict(shapes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def fixture_encoder(output_size: int = 1024, space: str = "z+"):
    """A pSp encoder (z+ or w+) with the fixture weights the official encoder fixtures used:
    the recipe over its state-dict keys plus ``latent_avg = fixture_tensor("latent_avg", ...)``."""
    from ..models.psp import PSPEncoder
    from .fixture_weights import fixture_tensor

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in PSPEncoder(output_size=output_size, space=space).state_dict().items()}
    state = {k: torch.from_numpy(v) for k, v in fixture_state_dict(shapes).items()}
    n_styles = 2 * (output_size.bit_length() - 1) - 2
    return PSPEncoder.from_state_dict(state, {"output_size": output_size, "start_from_latent_avg": True},
                                      torch.from_numpy(fixture_tensor("latent_avg", (n_styles, 512))), space=space)


def case_kind(meta: dict) -> str:
    if meta.get("model") in ("dualstylegan", "stylegan2"):
        return meta["model"]
    return "stylegan2" if meta["case"].startswith("sg_") else "dualstylegan"


def case_size(meta: dict, arrays: dict[str, np.ndarray]) -> int:
    if "size" in meta:
        return int(meta["size"])
    n = next(a.shape[1] for k, a in arrays.items() if k.startswith("in_") and a.ndim == 3)
    return 2 ** ((n + 2) // 2)


def _kwargs(meta: dict) -> dict:
    kw = dict(meta.get("official_kwargs") or {})
    call = meta.get("call", "")
    if not kw and "return_feat" in call:
        kw = dict(_TRANSFER_DEFAULT, return_feat=True)
    if "return_feat=True" in call:
        kw["return_feat"] = True
    return kw


def uses_preserve_color(meta: dict) -> bool:
    """style_transfer.py --preserve_color: named in the case, or the call uses the flag (the
    README's flag-free alternative, zero colour weights, mentions it without using it)."""
    call = meta.get("call", "")
    if "preserve_color" in meta["case"]:
        return True
    return "--preserve_color" in call and "no flag" not in call and "alternative to --preserve_color" not in call


def replay_case(arrays: dict[str, np.ndarray], meta: dict, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Run one case through our API and return ``{out_name: array}`` (float32)."""
    kw = _kwargs(meta)
    p = next(model.parameters())
    t = {k[3:]: torch.from_numpy(np.asarray(v, dtype=np.float32)).to(p) for k, v in arrays.items() if k.startswith("in_")}
    g = model.generator if isinstance(model, DualStyleGAN) else model
    if case_kind(meta) == "stylegan2" and isinstance(model, DualStyleGAN):
        model = model.generator
    out: dict[str, torch.Tensor] = {}
    wplus_mode = bool(kw.get("input_is_latent"))

    # intrinsic code(s)
    if "instyle_zplus" in t:  # --wplus mode: the content's z+ code is mapped first
        instyle = g.mapping(t["instyle_zplus"])
        out["instyle_wplus"] = instyle
    elif "instyle" in t:
        instyle = t["instyle"]
    elif "z1" in t:
        instyle = [t["z1"], t["z2"]]
    else:
        instyle = next(t[k] for k in ("z", "zplus", "wplus") if k in t)
    # truncation centre
    trunc_latent = kw.get("truncation_latent", 0)
    if isinstance(trunc_latent, str):  # "out_truncation_latent": g.style(zmean).mean(0)
        tl = g.style(t["zmean"]).mean(0, keepdim=True)
        out[trunc_latent[4:]] = tl
        trunc_latent = tl
    # noise
    noise = "stored"
    if kw.get("noise") == "explicit":
        idx = sorted(int(k[6:]) for k in t if re.fullmatch(r"noise_\d+", k))
        noise = [t[f"noise_{i}"] for i in idx]
    elif kw.get("randomize_noise", False):
        noise = "random"
    common = dict(input_space="w" if wplus_mode else "z", truncation=float(kw.get("truncation", 1.0)),
                  truncation_latent=trunc_latent, inject_index=kw.get("inject_index"), noise=noise)

    if isinstance(model, Generator):
        res = model(instyle, return_latents=bool(kw.get("return_latents")), **common)
        image, latent = res if isinstance(res, tuple) else (res, None)
    else:
        exstyle = None
        if "exstyle_zplus" in t:
            ex_z = t["exstyle_zplus"].clone()
            preserve = uses_preserve_color(meta)
            if preserve and not wplus_mode:  # z+ mode: swap colour rows before the mapping
                ex_z[:, 7:] = instyle[:, 7:]
            exstyle = model.map_exstyle(ex_z)
            if preserve and wplus_mode:  # --wplus mode: swap after the mapping
                exstyle[:, 7:] = instyle[:, 7:]
            out["exstyle"] = exstyle
        elif "exstyle_w" in t:
            exstyle = t["exstyle_w"]
        res = model(instyle, exstyle, use_res=bool(kw.get("use_res", True)),
                    interp_weights=kw.get("interp_weights", [1.0] * 18), fuse_index=kw.get("fuse_index"),
                    return_latents=bool(kw.get("return_latents")), return_feat=bool(kw.get("return_feat")), **common)
        if kw.get("return_feat"):
            out["feat"], out["skip"] = res
            image = latent = None
        else:
            image, latent = res if isinstance(res, tuple) else (res, None)
    if image is not None:
        out["image"] = image
    if latent is not None and kw.get("return_latents"):
        out["latent"] = latent
    return {f"out_{k}": v.detach().float().cpu().numpy() for k, v in out.items()}


def load_case(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta_json")))
    return arrays, meta


def build_model(meta: dict, arrays: dict, weights: str, manifests: str | None) -> torch.nn.Module:
    kind, size = case_kind(meta), case_size(meta, arrays)
    if weights == "fixture":
        manifest = None
        if manifests:
            name = "dualstylegan_generator" if kind == "dualstylegan" else "stylegan2_generator"
            manifest = Path(manifests) / f"{name}_{size}.json"
        return fixture_model(kind, size, manifest)
    from ..checkpoints import load_dualstylegan, load_stylegan2

    model = load_dualstylegan(weights) if kind == "dualstylegan" else load_stylegan2(weights)[0]
    if model.size != size:
        raise PasticheError(f"case {meta['case']} is a {size}px case but {weights} holds a {model.size}px model")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pastiche_core.reference",
                                     description="Replay official generator fixture cases through our API.")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="run one fixture case and write its outputs")
    rp.add_argument("case", help="fixture case .npz (in_* inputs, meta_json)")
    rp.add_argument("--out", required=True, help="output .npz with the same out_* keys")
    rp.add_argument("--weights", default="fixture",
                    help="'fixture' (deterministic fixture weights) or an official-format/our checkpoint file")
    rp.add_argument("--manifests", default=None, help="folder of official manifests to check our keys against")
    rp.add_argument("--path", choices=["fast", "reference"], default="fast", help="our fast ops or the reference ops")
    rp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from ..atomic import atomic_write, check_output

        out = Path(args.out if str(args.out).endswith(".npz") else f"{args.out}.npz")  # as np.savez names it
        out.parent.mkdir(parents=True, exist_ok=True)
        check_output(out, [args.case])  # before the work: never the case file itself
        arrays, meta = load_case(args.case)
        model = build_model(meta, arrays, args.weights, args.manifests).use_fast_path(args.path == "fast")
        with torch.inference_mode():
            outputs = replay_case(arrays, meta, model)
        expected = [k for k in arrays if k.startswith("out_")]
        if expected:  # write exactly the case's output keys
            missing = [k for k in expected if k not in outputs]
            if missing:
                raise PasticheError(f"case {meta['case']}: this replay does not produce {missing}")
            outputs = {k: outputs[k] for k in expected}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, meta_json=np.array(json.dumps(meta)), **outputs)

        atomic_write(out, write)
    except (PasticheError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for k, v in outputs.items():
        line = f"{meta['case']}: {k} {list(v.shape)}"
        if k in arrays:
            line += f"  max|diff| vs case = {np.abs(v - arrays[k].astype(np.float32)).max():.3g}"
        print(line)
    return 0
