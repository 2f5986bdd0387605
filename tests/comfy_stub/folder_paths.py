"""Stand-in for ComfyUI's ``folder_paths`` (the functions the pack uses, same signatures)."""
from __future__ import annotations

import os

base_path = os.environ.get("COMFY_STUB_BASE", os.path.join(os.path.abspath(os.getcwd()), ".comfy_stub_base"))
models_dir = os.path.join(base_path, "models")
supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
_input_directory = os.path.join(base_path, "input")
_output_directory = os.path.join(base_path, "output")


def set_base(path: str) -> None:
    """Test helper (not in ComfyUI): move models/, input/, output/ (like ``--base-directory``)."""
    global base_path, models_dir, _input_directory, _output_directory
    base_path = path
    models_dir = os.path.join(path, "models")
    _input_directory = os.path.join(path, "input")
    _output_directory = os.path.join(path, "output")
    folder_names_and_paths.clear()


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path in paths:
        if is_default and paths[0] != full_folder_path:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
        return
    if is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(folder_names_and_paths[folder_name][0])


def get_filename_list(folder_name: str) -> list[str]:
    paths, exts = folder_names_and_paths[folder_name]
    out = set()
    for p in paths:
        if not os.path.isdir(p):
            continue
        for root, _, files in os.walk(p, followlinks=True):
            for f in files:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    out.add(os.path.relpath(os.path.join(root, f), p).replace(os.sep, "/"))
    return sorted(out)


def get_full_path(folder_name: str, filename: str) -> str | None:
    for p in folder_names_and_paths.get(folder_name, ([], set()))[0]:
        full = os.path.join(p, os.path.normpath(filename))
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def get_input_directory() -> str:
    return _input_directory


def get_output_directory() -> str:
    return _output_directory
