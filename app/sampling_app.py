"""The interactive sampling app, as the original's Streamlit demo (scripts/sample_conditional.py):
pick a model folder and a conditioning (a class, a map, a photo; boxes and labels for a scene
model), watch the picture appear while its tokens are sampled, download it.

    make app        # streamlit run app/sampling_app.py --server.address 127.0.0.1 -- --model data/transformer

Options after `--`: --model (default data/transformer, what `make demo` trains),
--examples (a folder of example maps; default data/dataset/<depth|segmentation>/validation, or
for a segmentation model without them the shipped set of its labels: examples/<coco|ade20k|sflckr>),
--synsets (class names; default data/raw/synsets.json), --device (auto: CUDA when present).
Everything the app samples goes through tasks/generation, the code `taming sample-model`
and the `sample` stage run.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from models.errors import ModelFileError
from models.sampling_settings import InvalidSampling, SamplingSettings
from tasks.data.images import load_rgb
from tasks.generation import conditions as cond
from tasks.generation.model import SCENE_KINDS, SamplingModel
from tasks.generation.output import decode
from tasks.generation.tokens import sample_tokens
from tasks.runtime.errors import StageError

USER_ERRORS = (StageError, ModelFileError, FileNotFoundError, ValueError)
DISPLAY = 384  # pictures are enlarged (nearest) to at least this side, so tokens stay visible


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sampling_app")
    parser.add_argument("--model", default="data/transformer")
    parser.add_argument("--examples", default=None)
    parser.add_argument("--synsets", default="data/raw/synsets.json")
    parser.add_argument("--device", default="auto")
    return parser.parse_known_args(sys.argv[1:])[0]


@st.cache_resource(show_spinner="loading the model")
def load_model(path: str, device: str) -> SamplingModel:
    return SamplingModel.open(path, device)


def example_maps(folder: Path, limit: int = 200) -> list[Path]:
    """The PNG maps under a folder (any depth), sorted, at most `limit`."""
    return sorted(folder.rglob("*.png"))[:limit] if folder.is_dir() else []


def default_examples(model: SamplingModel) -> str:
    """The pipeline's validation maps when there are some, else the example set shipped in
    examples/ whose label maps the model reads (COCO-Stuff, ADE20k, S-FLCKR)."""
    pipeline = Path(f"data/dataset/{model.kind}/validation")
    shipped = cond.shipped_examples(model.n_labels) if model.kind == "segmentation" else None
    return str(shipped if shipped is not None and not example_maps(pipeline) else pipeline)


def enlarge(picture: np.ndarray, side: int = DISPLAY) -> np.ndarray:
    """Scale up by a whole factor (nearest) so the shorter side reaches about `side`."""
    factor = max(1, side // min(picture.shape[:2]))
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def fade_unsampled(picture: np.ndarray, rows_done: int, f: int) -> np.ndarray:
    """The rows whose tokens are not sampled yet, faded to light grey."""
    picture = picture.copy()
    picture[rows_done * f:] = picture[rows_done * f:] // 4 + 190
    return picture


def png_bytes(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def choose_condition(model: SamplingModel, args: argparse.Namespace, hw: tuple[int, int]) -> cond.Condition | None:
    """The conditioning widgets for this model's kind; the chosen condition (None: not yet)."""
    if model.kind == "none":
        st.caption("An unconditional model: no conditioning.")
        return cond.no_condition(model)
    if model.kind == "coord":
        st.caption("Conditioned on coordinates: every window of the output knows where it lies in the whole "
                   "picture, so an output above the training size is sampled as one large picture.")
        return cond.coord_condition(model, hw)
    if model.kind == "class_label":
        names = cond.class_names(model.n_classes, args.synsets)
        label = st.selectbox("Class (type to search)", range(model.n_classes), key="class",
                             format_func=lambda i: f"{i}: {names[i]}")
        return cond.class_condition(model, label)
    if model.kind in SCENE_KINDS:   # boxes and labels, as `taming sample-model --boxes` reads them
        from tasks.data.objects.records import parse_layouts
        from tasks.generation.boxes import scene_condition

        names = [c.name for c in model.scene.categories.categories[:3]]
        example = "objects:\n" + "".join(f"  - {{label: {name!r}, bbox: [{0.1 + 0.3 * k:.1f}, 0.3, 0.25, 0.5]}}\n"
                                         for k, name in enumerate(names))
        text = st.text_area("Layout: objects with a label (name or category id) and a bbox [x0, y0, width, "
                            "height] relative to the picture", example, key="layout", height=180)
        name, annotations = parse_layouts(text, model.scene.categories)[0]
        return scene_condition(model, name, annotations, hw)
    sources = ["example map", "upload a map", "upload a photo"]
    source = st.radio("Conditioning", sources, key="source", horizontal=True)
    if source == "example map":
        folder = Path(st.text_input("Example maps folder", args.examples or default_examples(model), key="examples"))
        maps = example_maps(folder)
        if not maps:
            st.warning(f"no PNG maps under {folder}")
            return None
        path = st.selectbox("Example", maps, key="example", format_func=lambda p: str(p.relative_to(folder)))
        return cond.map_condition(model, path, hw)
    if source == "upload a map":
        upload = st.file_uploader("Depth map (RGBA float32 or 8/16-bit grey PNG)" if model.kind == "depth"
                                  else "Label map (8-bit PNG of label ids)", type=["png"], key="map_upload")
        if upload is None:
            return None
        return cond.raw_map_condition(model, Path(upload.name).stem, cond.read_map(model, upload.getvalue(), upload.name), hw)
    from tasks.generation.photos import ANNOTATORS, annotate_photo

    network = st.selectbox("Annotator", ANNOTATORS[model.kind], key="annotator")
    upload = st.file_uploader("Photo", type=["png", "jpg", "jpeg"], key="photo_upload")
    if upload is None:
        return None
    rgb = load_rgb(upload.getvalue(), upload.name)
    return cond.raw_map_condition(model, Path(upload.name).stem,
                                  annotate_photo(model, rgb, upload.name, network), hw)


def sampling_widgets(model: SamplingModel) -> tuple[SamplingSettings, int, tuple[int, int], int]:
    """(settings, seed, output (height, width), preview every n token rows) from the sidebar."""
    bar = st.sidebar
    bar.subheader("Sampling")
    top_k = bar.number_input("top-k (0: off)", min_value=0, value=100, step=10, key="top_k")
    top_p = bar.slider("top-p (1: off)", 0.05, 1.0, 1.0, 0.01, key="top_p")
    temperature = bar.number_input("temperature", min_value=0.01, value=1.0, step=0.05, key="temperature")
    guidance = bar.slider("guidance scale (1: off)", 0.0, 8.0, 1.0, 0.25, key="guidance", disabled=not model.can_guide,
                          help="classifier-free guidance; needs a model trained with condition dropout")
    seed = int(bar.number_input("seed", min_value=0, value=0, step=1, key="seed"))
    f, size = model.downsampling, model.training_size
    bar.subheader("Output")
    width = int(bar.number_input("width (px)", min_value=size, value=size, step=f, key="width"))
    height = int(bar.number_input("height (px)", min_value=size, value=size, step=f, key="height"))
    every = int(bar.number_input("redraw every n token rows", min_value=1, value=2, step=1, key="every"))
    settings = SamplingSettings(top_k=int(top_k) or None, top_p=float(top_p), temperature=float(temperature),
                                guidance_scale=float(guidance) if model.can_guide else 1.0)
    return settings, seed, (height, width), every


def completion_widgets(model: SamplingModel, hw: tuple[int, int], grid: tuple[int, int]):
    """(tokens of the image to complete, raster positions kept), or None."""
    if not st.checkbox("Complete an image: keep its top, sample the rest", key="complete"):
        return None
    upload = st.file_uploader("Image to complete", type=["png", "jpg", "jpeg"], key="complete_upload")
    fraction = st.slider("fraction of the height to keep", 0.0, 0.95, 0.5, 0.05, key="keep")
    if upload is None:
        return None
    rgb = load_rgb(upload.getvalue(), upload.name)
    rows = cond.keep_token_rows(model, grid, fraction=fraction)
    return cond.completion_tokens(model, rgb, hw), rows * grid[1]


def sample(model: SamplingModel, condition: cond.Condition, completion, settings: SamplingSettings, seed: int,
           grid: tuple[int, int], every: int, progress, canvas) -> np.ndarray:
    """One picture, redrawn on `canvas` every `every` token rows while its tokens are sampled."""
    H, W = grid
    start = completion[1] if completion else 0
    progress.progress(0.0, text="sampling")

    def preview(z, done):
        rows = done // W
        picture = fade_unsampled(decode(model, z, grid)[0], rows, model.downsampling)
        canvas.image(enlarge(picture), caption=f"{done} of {H * W} tokens")
        progress.progress((done - start) / max(1, H * W - start), text=f"token row {rows} of {H}")

    z = sample_tokens(model, condition.tokens, 1, grid, settings, model.generator(seed),
                      z_init=completion[0] if completion else None, start=start,
                      preview=preview, preview_every=every * W)
    progress.progress(1.0, text="done")
    return decode(model, z, grid)[0]


def main() -> None:
    args = options()
    st.set_page_config(page_title="Taming Transformers: sampling", layout="wide")
    st.title("Taming Transformers: sampling")
    path = st.sidebar.text_input("Model folder (local or s3://)", args.model, key="model")
    try:
        model = load_model(path, args.device)
    except USER_ERRORS as e:
        st.error(f"cannot load {path}: {e}")
        return
    st.sidebar.caption(f"{model.name}: conditioned on {model.kind}, trained at {model.training_size} px "
                       f"(f{model.downsampling}, {model.window[0]}x{model.window[1]} tokens), "
                       f"{'guidance available' if model.can_guide else 'no guidance'}, on {model.device.type}")
    try:
        settings, seed, hw, every = sampling_widgets(model)
        grid = model.grid(*hw)
        condition = choose_condition(model, args, hw)
        completion = completion_widgets(model, hw, grid)
    except (*USER_ERRORS, InvalidSampling) as e:
        st.error(str(e))
        return
    if condition is not None and condition.picture is not None:
        st.image(enlarge(condition.picture, 192), caption=f"conditioning: {condition.name}")
    if grid != model.window:
        st.caption(f"{hw[1]}x{hw[0]} px is larger than the training size: sliding-window sampling "
                   f"over {grid[0]}x{grid[1]} tokens")
    clicked = st.button("Sample", key="sample", type="primary", disabled=condition is None)
    progress, canvas = st.empty(), st.empty()
    if clicked:
        try:
            picture = sample(model, condition, completion, settings, seed, grid, every, progress, canvas)
        except USER_ERRORS as e:
            st.error(str(e))
            return
        st.session_state["result"] = png_bytes(picture)
        st.session_state["result_name"] = f"{model.name}-{condition.name or 'sample'}-seed{seed}.png"
    if "result" in st.session_state:
        result = np.asarray(Image.open(io.BytesIO(st.session_state["result"])))
        canvas.image(enlarge(result), caption=f"sample, {result.shape[1]}x{result.shape[0]} px")
        st.download_button("Download PNG", st.session_state["result"], file_name=st.session_state["result_name"],
                           mime="image/png", key="download")


main()
