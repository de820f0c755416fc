"""What a model can declare and what data it can be given: the vocabulary shared by the models'
``capabilities`` and the metric table / evaluation suites that are chosen from them."""

from __future__ import annotations

# data kinds (a datamodule's ``is_continuous`` picks one)
IMAGES = "images"  # uint8 images on a pixel grid
POINTS = "points"  # continuous float points (toy2d)
DATA_KINDS = (IMAGES, POINTS)

# model capabilities (declared by genbench.models.base.GenerativeModel.capabilities)
LIKELIHOOD = "likelihood"  # log_likelihood gives nats per example (exact or a bound)
SAMPLER_STEPS = "sampler_steps"  # set_sampling_steps changes the number of sampler steps
CLASS_CONDITIONAL = "class_conditional"  # sample / log_likelihood take class labels: p(x | y)
GUIDANCE = "guidance"  # set_guidance_scale changes the classifier-free guidance weight of sample
CAPABILITIES = (LIKELIHOOD, SAMPLER_STEPS, CLASS_CONDITIONAL, GUIDANCE)


def data_kind(is_continuous: bool) -> str:
    return POINTS if is_continuous else IMAGES
