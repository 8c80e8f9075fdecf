"""Image-quality measurements: FID/KID (torch-fidelity), PSNR/SSIM, codebook usage."""
