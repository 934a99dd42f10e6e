"""Edge-small and cloud-large text-to-image diffusion engines, trained here."""

from t2i_router.engines.config import ENGINES, EngineConfig
from t2i_router.engines.engine import Engine, WeightsNotFoundError, load_denoiser, save_engine
from t2i_router.engines.sampler import SamplingError, diffusion_sample
from t2i_router.engines.text_encoder import TextEncoder, TextEncoderConfig
from t2i_router.engines.unet import Denoiser, UNetConfig

__all__ = [
    "ENGINES",
    "Denoiser",
    "Engine",
    "EngineConfig",
    "SamplingError",
    "TextEncoder",
    "TextEncoderConfig",
    "UNetConfig",
    "WeightsNotFoundError",
    "diffusion_sample",
    "load_denoiser",
    "save_engine",
]
