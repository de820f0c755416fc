"""Zero-shot image restoration with a trained diffusion model (DDNM): operators, sampler, benchmark."""
