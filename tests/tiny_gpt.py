"""A small GPT with non-trivial positions, layer norms and biases (fresh ones are 1, 0 and 0,
which would hide a position mix-up or a dropped bias), for the GPT and Decoder tests."""
import torch

from models.gpt import GPT, GPTConfig


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=37, block_size=24, n_layer=2, n_head=4, n_embd=32)
    config.update(overrides)
    gpt = GPT(GPTConfig(**config)).eval()
    with torch.no_grad():
        gpt.pos_emb.normal_(std=0.5)
        for name, p in gpt.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return gpt
