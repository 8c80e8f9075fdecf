"""Net2NetTransformer: the conditional transformer over VQGAN tokens.

The sequence the GPT models is `condition tokens + image tokens`; it predicts
every image token from the condition and the image tokens before it. Two APIs:

* token level (training from Parquet, sampling for the pipeline; no VQGAN is
  needed, so the first and condition stages may be None). Image tokens are in
  RASTER order, as a VQGAN's `encode` returns and the token files store them;
  the permuter is applied inside:
      forward_indices(z_indices, c_indices) -> (logits, target)
      sample_indices(c_indices, z_prefix, steps, ...) -> z_indices
* image level, with the original's semantics (sequence order = permuted order):
      forward(x, c), encode_to_z(x), encode_to_c(c), decode_to_img(indices, zshape),
      sample(x, c, steps, ...).

The state_dict keys are those of taming.models.cond_transformer.Net2NetTransformer
(`transformer.*`, `first_stage_model.*`, `cond_stage_model.*`, `permuter.*`).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.nn import functional as F

from models import sampling
from models.conditioning import SOSProvider, conditioner_from_original_config
from models.gpt import GPT, GPTConfig
from models.permuter import Identity, build_permuter
from models.sampling_settings import SamplingSettings

_ORIGINAL_PARAMS = {"transformer_config", "first_stage_config", "cond_stage_config", "permuter_config",
                    "ckpt_path", "ignore_keys", "first_stage_key", "cond_stage_key",
                    "downsample_cond_size", "pkeep", "sos_token", "unconditional"}
# Ours, written only by models trained with condition dropout (classifier-free guidance):
# the token that stands for "no condition"; the original's code does not know it.
_GUIDANCE_PARAMS = {"null_token", "cond_dropout"}


def _frozen(model: nn.Module | None) -> nn.Module | None:
    if model is not None:
        model.eval()
        model.requires_grad_(False)
    return model


@contextmanager
def _eval_mode(module: nn.Module):
    """Sample without dropout, then restore the caller's train/eval mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class Net2NetTransformer(nn.Module):
    """
    transformer: the GPT; its vocabulary covers image AND condition tokens
        (they share the embedding table, as in the original).
    first_stage_model / cond_stage_model: frozen VQGANs (or a conditioner from
        models.conditioning); None for token-level use.
    permuter: order in which image tokens are generated (default raster).
    downsample_cond_size: resize the condition to this side before encoding (-1: no).
    pkeep: in training, each input image token is kept with this probability and
        otherwise replaced by a random token (the target stays clean).
    unconditional: no condition; every sequence starts with `sos_token`.
    cond_dropout, null_token: in training, drop the whole condition of a sample with
        probability cond_dropout by replacing its tokens with null_token; this trains
        the unconditional model that classifier-free guidance needs.
    """

    def __init__(self, transformer: GPT, first_stage_model: nn.Module | None = None,
                 cond_stage_model: nn.Module | None = None, permuter: nn.Module | None = None,
                 first_stage_key: str = "image", cond_stage_key: str = "depth",
                 downsample_cond_size: int = -1, pkeep: float = 1.0, sos_token: int = 0,
                 unconditional: bool = False, cond_dropout: float = 0.0, null_token: int | None = None):
        super().__init__()
        vocab = transformer.config.vocab_size
        if not 0.0 <= pkeep <= 1.0:
            raise ValueError(f"pkeep must be in [0, 1], got {pkeep}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        if cond_dropout > 0 and null_token is None:
            raise ValueError("cond_dropout > 0 needs a null_token to stand for the dropped condition")
        for name, token in (("sos_token", sos_token), ("null_token", null_token)):
            if token is not None and not 0 <= token < vocab:
                raise ValueError(f"{name} {token} is outside the transformer vocabulary [0, {vocab})")
        self.be_unconditional = unconditional
        self.sos_token = sos_token
        self.first_stage_key = first_stage_key
        self.cond_stage_key = first_stage_key if unconditional else cond_stage_key
        self.downsample_cond_size = downsample_cond_size
        self.pkeep = pkeep
        self.cond_dropout = cond_dropout
        self.null_token = null_token
        self.transformer = transformer
        self.permuter = permuter if permuter is not None else Identity()
        self.first_stage_model = _frozen(first_stage_model)
        self.cond_stage_model = SOSProvider(sos_token) if unconditional else _frozen(cond_stage_model)

    @classmethod
    def from_original_config(cls, params: dict, first_stage_model: nn.Module | None = None,
                             cond_stage_model: nn.Module | None = None) -> "Net2NetTransformer":
        """Build from the original YAML's `model.params` (first_stage_config may be
        left out: the stage is passed built). A cond stage without weights (class
        label, SOS, coordinates, "__is_first_stage__") is built from cond_stage_config
        when not passed. Weights are loaded by the caller."""
        unknown = set(params) - _ORIGINAL_PARAMS - _GUIDANCE_PARAMS
        if unknown:
            raise ValueError(f"unknown Net2NetTransformer parameter(s) {sorted(unknown)}")
        transformer_config = params["transformer_config"]
        if not str(transformer_config.get("target", "")).endswith("mingpt.GPT"):
            raise ValueError(f"transformer_config.target must be taming.modules.transformer.mingpt.GPT, "
                             f"got {transformer_config.get('target')!r}")
        gpt = GPT(GPTConfig(**transformer_config.get("params", {})))
        permuter = None
        if params.get("permuter_config"):
            name = params["permuter_config"]["target"].rsplit(".", 1)[-1]
            permuter = build_permuter(name, **(params["permuter_config"].get("params") or {}))
        unconditional = bool(params.get("unconditional", False))
        if cond_stage_model is None and "cond_stage_config" in params and not unconditional:
            if params["cond_stage_config"] == "__is_unconditional__":
                unconditional = True
            else:
                cond_stage_model = conditioner_from_original_config(
                    params["cond_stage_config"], first_stage_model, params.get("sos_token", 0))
        return cls(gpt, first_stage_model, cond_stage_model, permuter,
                   first_stage_key=params.get("first_stage_key", "image"),
                   cond_stage_key=params.get("cond_stage_key", "depth"),
                   downsample_cond_size=params.get("downsample_cond_size", -1),
                   pkeep=params.get("pkeep", 1.0), sos_token=params.get("sos_token", 0),
                   unconditional=unconditional, null_token=params.get("null_token"))

    @classmethod
    def for_tokens(cls, *, z_vocab: int, z_length: int, c_vocab: int = 0, c_length: int = 1,
                   n_layer: int = 12, n_head: int = 8, n_embd: int = 256, embd_pdrop: float = 0.0,
                   resid_pdrop: float = 0.0, attn_pdrop: float = 0.0, **kwargs) -> "Net2NetTransformer":
        """A token-level model (no VQGAN attached) sized from token counts: z_length
        image tokens from a z_vocab codebook after c_length condition tokens from a
        c_vocab one (1 SOS token if unconditional). The shared vocabulary also covers
        sos_token and null_token. kwargs: the constructor's (cond_stage_key, pkeep,
        permuter, unconditional, cond_dropout, null_token, ...)."""
        specials = [kwargs.get("sos_token", 0), kwargs.get("null_token")]
        vocab = max([z_vocab, c_vocab] + [t + 1 for t in specials if t is not None])
        config = GPTConfig(vocab_size=vocab, block_size=c_length + z_length, n_layer=n_layer,
                           n_head=n_head, n_embd=n_embd, embd_pdrop=embd_pdrop,
                           resid_pdrop=resid_pdrop, attn_pdrop=attn_pdrop)
        return cls(GPT(config), **kwargs)

    def train(self, mode: bool = True) -> "Net2NetTransformer":
        super().train(mode)
        for stage in (self.first_stage_model, self.cond_stage_model):
            if stage is not None:
                stage.eval()  # frozen stages never switch to training behaviour
        return self

    @property
    def image_vocab(self) -> int | None:
        """The tokens the first stage decodes (None without one): sampling draws image
        tokens among these only, also when the shared vocabulary holds more (condition
        tokens, e.g. a scene model's object and coordinate tokens)."""
        return None if self.first_stage_model is None else int(self.first_stage_model.quantize.re_embed)

    # ---- token level -------------------------------------------------------------

    def _check_tokens(self, name: str, tokens: torch.Tensor) -> None:
        vocab = self.transformer.config.vocab_size
        if tokens.dim() != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise ValueError(f"{name} must be integer tokens shaped (B, n), got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel():
            low, high = torch.stack(torch.aminmax(tokens.long())).tolist()  # one device sync
            if low < 0 or high >= vocab:
                raise ValueError(f"{name} has tokens outside the transformer vocabulary [0, {vocab}): {low}..{high}")

    def _condition(self, c_indices: torch.Tensor | None, batch_size: int, device) -> torch.Tensor:
        """The condition tokens (B, n_c); the SOS token for an unconditional model."""
        if self.be_unconditional:
            return torch.full((batch_size, 1), self.sos_token, dtype=torch.int64, device=device)
        if c_indices is None:
            raise ValueError("this model is conditional: c_indices are required")
        self._check_tokens("c_indices", c_indices)
        return c_indices.long()

    def forward_indices(self, z_indices: torch.Tensor, c_indices: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing on tokens. z_indices (B, n_z) in raster order, c_indices
        (B, n_c) (None if unconditional) -> (logits (B, n_z, vocab), target (B, n_z)):
        logits[:, i] predicts target[:, i], the i-th image token in generation order.
        In training mode pkeep corruption and condition dropout are applied."""
        self._check_tokens("z_indices", z_indices)
        target = self.permuter(z_indices.long())
        c = self._condition(c_indices, target.shape[0], target.device)
        inputs = target
        if self.training and self.pkeep < 1.0:
            keep = torch.bernoulli(torch.full(target.shape, self.pkeep, device=target.device)).bool()
            inputs = torch.where(keep, target, torch.randint_like(target, self.transformer.config.vocab_size))
        if self.training and self.cond_dropout > 0:
            drop = torch.rand(c.shape[0], 1, device=c.device) < self.cond_dropout
            c = c.masked_fill(drop, self.null_token)
        logits, _ = self.transformer(torch.cat((c, inputs), dim=1)[:, :-1])
        # output i predicts sequence element i + 1, so image token 0 comes from the last condition position
        return logits[:, c.shape[1] - 1:], target

    def _null_token(self) -> int:
        if self.null_token is None:
            raise ValueError("classifier-free guidance needs a model trained with condition dropout "
                             "(a null_token); this one was not")
        return self.null_token

    def _sample_sequence(self, c: torch.Tensor, z_prefix: torch.Tensor | None, steps: int,
                         settings: SamplingSettings, generator: torch.Generator | None = None,
                         callback=None) -> torch.Tensor:
        """Condition c (B, n_c) + image prefix in generation order -> prefix + `steps` new tokens."""
        if z_prefix is None:
            z_prefix = c.new_empty(c.shape[0], 0)
        self._check_tokens("z_prefix", z_prefix)
        prefix = torch.cat((c, z_prefix.long()), dim=1)
        uncond_prefix = None
        if settings.guided:
            uncond_prefix = torch.cat((torch.full_like(c, self._null_token()), z_prefix.long()), dim=1)
        with _eval_mode(self.transformer) as gpt:
            new = sampling.generate(gpt, prefix, steps, settings, generator=generator,
                                    uncond_prefix=uncond_prefix, callback=callback, vocab=self.image_vocab)
        return torch.cat((z_prefix.long(), new), dim=1)

    def sample_indices(self, c_indices: torch.Tensor | None, z_prefix: torch.Tensor | None = None,
                       steps: int = 0, settings: SamplingSettings = SamplingSettings(),
                       generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
        """Sample image tokens through the KV cache.

        c_indices (B, n_c), or None for an unconditional model; z_prefix (B, p): the
        first image tokens in generation order (raster order for the default
        permuter), or None. Returns all p + steps image tokens in RASTER order
        (B, p + steps); with a non-identity permuter p + steps must fill the grid.
        settings.guidance_scale != 1 applies classifier-free guidance against null_token."""
        batch = c_indices.shape[0] if c_indices is not None else z_prefix.shape[0]
        device = (c_indices if c_indices is not None else z_prefix).device
        c = self._condition(c_indices, batch, device)
        sequence = self._sample_sequence(c, z_prefix, steps, settings, generator, callback)
        return self.permuter(sequence, reverse=True)

    def sample_indices_sliding(self, c_indices: torch.Tensor | None, grid: tuple[int, int],
                               window: tuple[int, int], z_init: torch.Tensor | None = None,
                               settings: SamplingSettings = SamplingSettings(),
                               generator: torch.Generator | None = None, callback=None,
                               start: int = 0, stop: int | None = None,
                               centre: tuple[int, int] | None = None) -> torch.Tensor:
        """Sample a latent grid (H, W), square or not, larger than the training grid
        `window` (h, w): each position from a training-size window around it
        (sampling.generate_sliding_window). c_indices: (B, H*W) condition tokens on the
        same grid, raster order, or (B, H-h+1, W-w+1, n_c) condition tokens for each
        window position (scenes), or (B, n_c) prefix tokens (class), or None
        (unconditional). z_init (B, H*W): the grid to start from, of which raster
        positions [start, stop) are sampled (completion keeps the ones before `start`).
        settings.guidance_scale != 1 applies classifier-free guidance against null_token.
        centre: the sampled position's place in its window (sampling.generate_sliding_window).
        Returns (B, H*W) raster."""
        if not isinstance(self.permuter, Identity):
            raise ValueError("sliding-window sampling walks the grid in raster order; it needs the Identity permuter")
        H, W = grid
        if c_indices is not None and c_indices.dim() == 4:
            self._check_tokens("c_indices", c_indices.reshape(c_indices.shape[0], -1))
            c = c_indices.long()
        elif c_indices is not None and c_indices.shape[1] == H * W:
            self._check_tokens("c_indices", c_indices)
            c = c_indices.long().reshape(-1, H, W)
        else:
            batch = c_indices.shape[0] if c_indices is not None else z_init.shape[0]
            c = self._condition(c_indices, batch, (c_indices if c_indices is not None else z_init).device)
        z = torch.zeros(c.shape[0], H, W, dtype=torch.int64, device=c.device) if z_init is None \
            else z_init.long().reshape(-1, H, W)
        uncond = torch.full_like(c, self._null_token()) if settings.guided else None
        with _eval_mode(self.transformer) as gpt:
            out = sampling.generate_sliding_window(gpt, c, z, window, settings, generator=generator,
                                                   start=start, stop=stop, callback=callback, uncond_c=uncond,
                                                   vocab=self.image_vocab, centre=centre)
        return out.reshape(out.shape[0], -1)

    # ---- image level (the original's API) -------------------------------------------

    def _require(self, stage: str) -> nn.Module:
        model = getattr(self, stage)
        if model is None:
            raise RuntimeError(f"{stage} is not attached; this Net2NetTransformer works on tokens only")
        return model

    @torch.no_grad()
    def encode_to_z(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (B, 3, H, W) -> (quant (B, C, h, w), indices (B, h*w) in generation order)."""
        quant, _, indices = self._require("first_stage_model").encode(x)
        return quant, self.permuter(indices.reshape(quant.shape[0], -1))

    @torch.no_grad()
    def encode_to_c(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition -> (quant, indices (B, n_c)). Segmentation label maps (B, H, W)
        become one-hot (B, n_labels, H, W), the input of a VQ segmentation model."""
        cond_stage = self._require("cond_stage_model")
        if self.cond_stage_key == "segmentation" and not c.is_floating_point():
            n_labels = getattr(cond_stage, "n_labels", None)
            if n_labels is None:
                raise ValueError("integer segmentation labels need a cond stage with n_labels "
                                 "(a VQSegmentationModel); pass one-hot maps otherwise")
            c = F.one_hot(c.long(), n_labels).permute(0, 3, 1, 2).float()
        if self.downsample_cond_size > -1:
            c = F.interpolate(c, size=(self.downsample_cond_size, self.downsample_cond_size))
        quant, _, indices = cond_stage.encode(c)
        return quant, indices.reshape(quant.shape[0], -1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and conditions -> (logits, target), as forward_indices."""
        quant, _, z_indices = self._require("first_stage_model").encode(x)
        _, c_indices = self.encode_to_c(c)
        return self.forward_indices(z_indices.reshape(quant.shape[0], -1), c_indices)

    @torch.no_grad()
    def decode_to_img(self, index: torch.Tensor, zshape) -> torch.Tensor:
        """Indices in generation order (B, h*w) and the latent shape (B, C, h, w) -> images."""
        raster = self.permuter(index, reverse=True)
        return self._require("first_stage_model").decode_indices(raster, (zshape[2], zshape[3]))

    @torch.no_grad()
    def sample(self, x: torch.Tensor, c: torch.Tensor, steps: int, temperature: float = 1.0,
               sample: bool = False, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
        """The original's signature: continue image tokens x (B, p) (generation order)
        given condition tokens c (B, n_c) by `steps` tokens; argmax unless `sample`.
        Returns (B, p + steps) in generation order. Runs through the KV cache."""
        settings = SamplingSettings(top_k=top_k, top_p=top_p, temperature=temperature, greedy=not sample)
        return self._sample_sequence(c.long(), x, steps, settings, generator, callback)
