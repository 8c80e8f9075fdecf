"""Sampling a transformer folder, shared by the `sample` stage, the `sample-model` command and the app.

    model.py       SamplingModel: a folder loaded on its device, what it is conditioned on
    conditions.py  condition tokens from class labels, map files, and the kept top of an
                   image to complete
    photos.py      photos as conditions, annotated on the fly with MiDaS / DeepLab
    boxes.py       scene models: layouts of boxes and labels as conditions (one sequence per
                   sliding-window position), and their drawings
    tokens.py      the token loop: KV cache on the training grid, a sliding window on any other
                   grid (square or not), progress and live previews
    output.py      tokens -> pictures; PNGs and an .npz streamed to disk
"""
