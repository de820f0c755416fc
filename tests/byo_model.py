"""A model outside genbench's registry, for the own-model tests: independent per-pixel categoricals.

It keeps the GenerativeModel contract (uint8 samples, float64 log-likelihoods in nats, exact) and declares its
own family, which is not one of genbench's four.
"""

import torch
import torch.nn.functional as F

from genbench.models.base import LIKELIHOOD_EXACT, GenerativeModel, eval_mode


class PixelHistogram(GenerativeModel):
    family = "independent"
    likelihood_kind = LIKELIHOOD_EXACT

    def __init__(self, data_shape, num_levels, num_classes, lr: float = 0.05, temperature: float = 1.0) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        self.save_hyperparameters()
        self.logits = torch.nn.Parameter(torch.zeros(self.num_dims, self.num_levels))

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        logp = F.log_softmax(self.logits.double() / self.hparams.temperature, dim=-1)
        flat = x.reshape(len(x), -1).long().to(self.logits.device)
        return logp.gather(1, flat.t()).sum(0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_sample_count(n)
        with eval_mode(self), torch.no_grad():
            if n == 0:
                return torch.zeros((0, *self.data_shape), dtype=torch.uint8)
            probs = F.softmax(self.logits.detach().float().cpu() / self.hparams.temperature, dim=-1)
            idx = torch.multinomial(probs, n, replacement=True, generator=generator)  # [D, n]
            return idx.t().reshape(n, *self.data_shape).to(torch.uint8)

    def sampler_info(self):
        return {"eval_mode": True, "sampler": "independent categorical", "network_evaluations": 1}

    def training_step(self, batch, batch_idx):
        loss = -self.log_likelihood(batch[0]).mean().float() / self.num_dims
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", -self.log_likelihood(batch[0]).mean().float() / self.num_dims)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
