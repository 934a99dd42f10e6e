"""Engines with tiny seeded UNets: training, save/load, batch invariance, ONNX parity, errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_router.cli import main
from t2i_router.engines import (
    Denoiser,
    Engine,
    EngineConfig,
    SamplingError,
    TextEncoder,
    WeightsNotFoundError,
    load_denoiser,
    save_engine,
)
from t2i_router.engines.batches import batch_stream
from t2i_router.engines.checkpoints import checkpoint_recipe
from t2i_router.engines.export import OnnxDenoiser, export_onnx
from t2i_router.engines.invariance import assert_same_images, image_difference
from t2i_router.engines.recipe import TrainConfig, TrainingError, lr_factor
from t2i_router.engines.sampler import diffusion_sample, make_scheduler, rescale_guided
from t2i_router.engines.serving import ensure_onnx
from t2i_router.engines.training import Trainer
from t2i_router.engines.unet import add_position_channels, position_maps, tiny_unet_config

MODELS = Path(__file__).resolve().parents[2] / "models"
TINY = {c: tiny_unet_config(c) for c in ("pooled", "cross_attention")}
PROMPTS = [
    "a red circle",
    "two big blue squares left of a green triangle on black",
    "anything at all, even a dog",
    "",
    "four tiny yellow triangles",
]


def tiny_engine_config(conditioning: str = "cross_attention") -> EngineConfig:
    return EngineConfig(name="tiny", unet=TINY[conditioning], default_steps=3, max_steps=10)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module", params=["pooled", "cross_attention"])
def tiny_engine(request, encoder) -> Engine:
    torch.manual_seed(0)
    config = tiny_engine_config(request.param)
    return Engine(config, Denoiser(config.unet).eval(), encoder)


def test_text_encoder_gives_fixed_length_masked_embeddings(encoder):
    tokens, mask = encoder.encode(["a red circle", "three small red circles above a blue square"])
    assert tokens.shape == (2, 24, 384) and mask.shape == (2, 24)
    assert mask[0].sum() == 5  # [CLS] a red circle [SEP]
    assert np.abs(tokens[0, 5:]).max() == 0.0  # padding is zeroed
    again, _ = encoder.encode(["a red circle"])
    np.testing.assert_allclose(again[0], tokens[0], atol=1e-5)


def test_text_encoder_path_is_configurable(tmp_path):
    from t2i_router.engines.text_encoder import EncoderNotFoundError, TextEncoderConfig

    with pytest.raises(EncoderNotFoundError, match=str(tmp_path)):
        TextEncoder(TextEncoderConfig(model_path=str(tmp_path)))


def test_a_few_training_steps_reduce_the_loss_on_a_fixed_batch(encoder, tmp_path):
    trainer = Trainer(
        tiny_engine_config(), tmp_path, TrainConfig(prompt_pool=32, batch_size=8), encoder=encoder
    )
    fixed = trainer.batch()  # the same batch every step
    first = np.mean([trainer.train_step(fixed) for _ in range(5)])
    for _ in range(40):
        trainer.train_step(fixed)
    last = np.mean([trainer.train_step(fixed) for _ in range(5)])
    assert last < 0.8 * first


def test_training_resumes_exactly(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=32, batch_size=4)
    straight = Trainer(tiny_engine_config(), tmp_path / "a", cfg, encoder=encoder)
    straight.run(max_steps=4, progress=False, evaluate_at_end=False)
    first = Trainer(tiny_engine_config(), tmp_path / "b", cfg, encoder=encoder)
    first.run(max_steps=2, progress=False, evaluate_at_end=False)
    resumed = Trainer(tiny_engine_config(), tmp_path / "b", cfg, encoder=encoder)
    resumed.load_checkpoint()
    assert resumed.step == 2
    resumed.run(max_steps=4, progress=False, evaluate_at_end=False)
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_steps_batch_is_the_same_with_any_number_of_render_workers(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=32, batch_size=4)
    trainer = Trainer(tiny_engine_config(), tmp_path, cfg, encoder=encoder)
    pool, steps = trainer.pairs, trainer.config.num_train_timesteps
    inline = batch_stream(pool, cfg, steps, first_step=5)
    workers = batch_stream(pool, replace(cfg, data_workers=2), steps, first_step=5)
    for step in range(5, 10):
        a, b = next(inline), next(workers)
        for field in ("images", "pool_index", "drop", "noise", "timesteps", "masks"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        np.testing.assert_array_equal(a.images, trainer.batch(step).images)
    workers.close()  # terminates its processes
    assert a.images.shape == (4, 3, 32, 32) and a.images.dtype == np.float32
    assert a.images.min() >= -1.0 and a.images.max() <= 1.0
    assert not np.array_equal(trainer.batch(0).noise, trainer.batch(1).noise)


def test_training_on_a_missing_gpu_fails_clearly(encoder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device")
    with pytest.raises(TrainingError, match="device is 'cuda', but torch sees no CUDA device"):
        Trainer(tiny_engine_config(), tmp_path, TrainConfig(prompt_pool=4, device="cuda"), encoder)
    with pytest.raises(TrainingError, match="device is 'gpu0', expected cpu or cuda"):
        Trainer(tiny_engine_config(), tmp_path, TrainConfig(prompt_pool=4, device="gpu0"), encoder)


@pytest.mark.gpu
def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=32, batch_size=4, data_workers=1)
    on_gpu = Trainer(tiny_engine_config(), tmp_path, replace(cfg, device="cuda"), encoder=encoder)
    on_gpu.run(max_steps=2, progress=False, evaluate_at_end=True)
    assert on_gpu.curve and next(on_gpu.model.parameters()).is_cuda
    on_cpu = Trainer(tiny_engine_config(), tmp_path, cfg, encoder=encoder)
    on_cpu.load_checkpoint()
    assert on_cpu.step == 2 and not next(on_cpu.model.parameters()).is_cuda
    reference = Trainer(tiny_engine_config(), tmp_path / "cpu", cfg, encoder=encoder)
    reference.run(max_steps=2, progress=False, evaluate_at_end=False)
    for (name, a), b in zip(
        reference.model.state_dict().items(), on_cpu.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)  # same data, any device
    saved, _ = load_denoiser(tmp_path)  # the engine the GPU run saved loads here
    for (name, a), b in zip(
        saved.state_dict().items(), on_cpu.ema.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    on_cpu.run(max_steps=3, progress=False, evaluate_at_end=False)
    assert on_cpu.step == 3


def test_resume_without_checkpoint_or_with_another_config_fails_clearly(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=16, batch_size=2)
    trainer = Trainer(tiny_engine_config(), tmp_path, cfg, encoder=encoder)
    with pytest.raises(TrainingError, match="does not exist"):
        trainer.load_checkpoint()
    trainer.run(max_steps=1, progress=False, evaluate_at_end=False)
    other = Trainer(tiny_engine_config("pooled"), tmp_path, cfg, encoder=encoder)
    with pytest.raises(TrainingError, match=r"another engine config \(unet\)"):
        other.load_checkpoint()
    # sampling defaults are not part of what was trained: a resume may change them
    sampling = replace(tiny_engine_config(), default_guidance=1.0, default_steps=4)
    resumed = Trainer(sampling, tmp_path, cfg, encoder=encoder)
    resumed.load_checkpoint()
    assert resumed.step == 1


def test_save_load_round_trip(tiny_engine, tmp_path):
    save_engine(tiny_engine.denoise, tiny_engine.config, tmp_path)
    model, config = load_denoiser(tmp_path)
    assert config == tiny_engine.config
    loaded = Engine(config, model, tiny_engine.encoder)
    np.testing.assert_array_equal(
        loaded.generate(PROMPTS, [1, 2, 3, 4, 5]), tiny_engine.generate(PROMPTS, [1, 2, 3, 4, 5])
    )


def test_same_seed_gives_the_same_image_alone_or_in_any_batch(tiny_engine):
    seeds = [10, 11, 12, 13, 14]
    batch = tiny_engine.generate(PROMPTS, seeds)
    assert batch.shape == (5, 32, 32, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(tiny_engine.generate(PROMPTS, seeds), batch)  # same batch
    for i in (0, 3):
        alone = tiny_engine.generate([PROMPTS[i]], [seeds[i]])
        assert_same_images(alone[0], batch[i], err_msg=f"prompt {i} alone")
    shuffled = tiny_engine.generate(PROMPTS[::-1], seeds[::-1])
    assert_same_images(shuffled[::-1], batch, err_msg="batch reversed")
    other_seed = image_difference(batch[0], tiny_engine.generate([PROMPTS[0]], [99])[0])
    assert not other_seed.within_claim, other_seed  # the seed matters far beyond rounding


def test_steps_and_guidance_change_the_image(tiny_engine):
    base = tiny_engine.generate(PROMPTS[:2], [1, 2])
    assert not np.array_equal(base, tiny_engine.generate(PROMPTS[:2], [1, 2], steps=5))
    assert not np.array_equal(base, tiny_engine.generate(PROMPTS[:2], [1, 2], guidance=0.0))


def test_guidance_rescale_matches_the_conditional_std_per_image():
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn((3, 3, 8, 8), generator=gen)
    v = 4.0 * torch.randn((3, 3, 8, 8), generator=gen)
    assert rescale_guided(v, cond, 0.0) is v
    full = rescale_guided(v, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    half = rescale_guided(v, cond, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * v)
    torch.testing.assert_close(
        rescale_guided(v[1:2], cond[1:2], 0.7), rescale_guided(v, cond, 0.7)[1:2]
    )


def test_guidance_rescale_changes_images_but_not_batch_independence(tiny_engine):
    rescaled = Engine(
        replace(tiny_engine.config, guidance_rescale=0.7), tiny_engine.denoise, tiny_engine.encoder
    )
    seeds = [10, 11, 12, 13, 14]
    batch = rescaled.generate(PROMPTS, seeds, guidance=4.0)
    assert not np.array_equal(batch, tiny_engine.generate(PROMPTS, seeds, guidance=4.0))
    assert_same_images(rescaled.generate([PROMPTS[1]], [11], guidance=4.0)[0], batch[1])


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
def test_multistep_samplers_change_images_but_not_batch_independence(tiny_engine, sampler):
    other = Engine(
        replace(tiny_engine.config, sampler=sampler), tiny_engine.denoise, tiny_engine.encoder
    )
    seeds, steps, guidance = [10, 11, 12, 13, 14], [3, 5, 3, 5, 3], [1.0, 1.0, 3.0, 2.0, 1.0]
    batch = other.generate(PROMPTS, seeds, steps=steps, guidance=guidance)
    ddim = tiny_engine.generate(PROMPTS, seeds, steps=steps, guidance=guidance)
    assert not np.array_equal(batch, ddim)
    alone = np.stack(
        [
            other.generate([PROMPTS[i]], [seeds[i]], steps=steps[i], guidance=guidance[i])[0]
            for i in range(len(PROMPTS))
        ]
    )
    assert_same_images(alone, batch)  # other batch sizes: the same images up to batching


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc"])
def test_on_step_sees_each_steps_clipped_prediction_ending_at_the_image(tiny_engine, sampler):
    tokens, mask = (torch.from_numpy(a) for a in tiny_engine.encoder.encode(PROMPTS[:2]))
    seen = []
    images = diffusion_sample(
        tiny_engine.denoise,
        tokens,
        mask,
        tokens[:1],
        mask[:1],
        [1, 2],
        4,
        1.0,
        on_step=lambda i, x0: seen.append((i, x0)),
        sampler=sampler,
    )
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert all(x0.shape == (2, 3, 32, 32) and x0.abs().max() <= 1 for _, x0 in seen)
    # the last step lands on the last prediction of the image (DDIM exactly; the multistep
    # solvers blend in earlier predictions, a gray level or so apart)
    last = ((seen[-1][1] + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    diff = np.abs(last - images.astype(np.float64))
    assert diff.max() == 0 if sampler == "ddim" else diff.mean() < 2


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
def test_multistep_clip_is_diffusers_dynamic_threshold_bit_for_bit(sampler):
    ours = make_scheduler(1000, sampler)
    theirs = type(ours).__mro__[1].from_config(ours.config)  # diffusers' own class
    assert type(theirs).__module__.startswith("diffusers")
    for s in (ours, theirs):
        s.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((4, 3, 32, 32), generator=g)
    y = x.clone()
    for t in ours.timesteps:
        v = 3.0 * torch.randn((4, 3, 32, 32), generator=g)  # x0 predictions far outside [-1, 1]
        x, y = ours.step(v, t, x).prev_sample, theirs.step(v, t, y).prev_sample
    torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_bad_sampler_is_named_and_old_configs_sample_with_ddim(tiny_engine):
    with pytest.raises(
        ValueError, match=r"sampler is 'euler', must be one of ddim, dpmpp_2m, unipc"
    ):
        replace(tiny_engine.config, sampler="euler")
    tokens, mask = (torch.from_numpy(a) for a in tiny_engine.encoder.encode(["a red circle"]))
    with pytest.raises(SamplingError, match=r"sampler is 'heun'"):
        diffusion_sample(
            tiny_engine.denoise, tokens, mask, tokens, mask, [0], 2, 1.0, sampler="heun"
        )
    written_before = {k: v for k, v in tiny_engine.config.to_dict().items() if k != "sampler"}
    assert EngineConfig.from_dict(written_before).sampler == "ddim"


def test_guidance_one_skips_the_empty_prompt_pass_and_mixes_with_others(tiny_engine):
    rows = []

    def counting(x, t, tokens, mask):
        rows.append(x.shape[0])
        return tiny_engine.denoise(x, t, tokens, mask)

    counted = Engine(tiny_engine.config, counting, tiny_engine.encoder)
    plain = counted.generate(PROMPTS[:2], [1, 2], steps=2, guidance=1.0)
    assert rows == [2, 2]  # conditional rows only
    rows.clear()
    mixed = counted.generate(PROMPTS[:3], [1, 2, 3], steps=2, guidance=[1.0, 1.0, 3.0])
    assert rows == [4, 4]  # three conditional rows, one empty-prompt row
    # 4 UNet rows here against 2 alone: the same images up to batching (docs/engines.md)
    assert_same_images(mixed[:2], plain)
    alone = tiny_engine.generate(PROMPTS[2:3], [3], steps=2, guidance=3.0)
    assert_same_images(mixed[2], alone[0])


def test_bad_guidance_rescale_is_named(tiny_engine):
    with pytest.raises(ValueError, match=r"guidance_rescale is 1\.5, must be in \[0, 1\]"):
        replace(tiny_engine.config, guidance_rescale=1.5)
    tokens, mask = (torch.from_numpy(a) for a in tiny_engine.encoder.encode(["a red circle"]))
    with pytest.raises(SamplingError, match=r"guidance_rescale is -0\.1"):
        diffusion_sample(
            tiny_engine.denoise, tokens, mask, tokens, mask, [0], 2, 2.0, guidance_rescale=-0.1
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps is 0"),
        ({"steps": 11}, "steps is 11, must be in 1..10"),
        ({"guidance": -1.0}, "guidance is -1.0"),
        ({"guidance": float("nan")}, "guidance is nan"),
    ],
)
def test_bad_settings_raise_sampling_error_quoting_the_value(tiny_engine, kwargs, message):
    with pytest.raises(SamplingError, match=message):
        tiny_engine.generate(PROMPTS[:1], [0], **kwargs)


def test_prompts_and_seeds_must_match(tiny_engine):
    with pytest.raises(SamplingError, match="2 prompts but 1 seeds"):
        tiny_engine.generate(PROMPTS[:2], [0])


def test_missing_weights_give_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"config\.json does not exist"):
        load_denoiser(tmp_path)


# ONNX Runtime against torch on the UNet outputs (velocity), as docs/engines.md ("ONNX export")
# states: within 1e-5 absolute. Measured max |difference| on these inputs: 1.5e-6 on the tiny
# seeded UNets, 2.3e-6 (edge_small) and 6.2e-6 (cloud_large) on the committed weights, with
# outputs up to 3.6 in size (2-core AMD EPYC, AVX2).
ONNX_VELOCITY_ATOL = 1e-5


def _unet_inputs(encoder: TextEncoder, n: int = 10) -> tuple[torch.Tensor, ...]:
    """Seeded noisy samples at timesteps across the schedule, with real prompt tokens."""
    g = torch.Generator().manual_seed(0)
    tokens, mask = (torch.from_numpy(a) for a in encoder.encode((PROMPTS * 2)[:n]))
    sample = torch.randn(n, 3, 32, 32, generator=g)
    timestep = torch.linspace(0, 999, n).round().long()
    return sample, timestep, tokens, mask


def _assert_onnx_velocity_matches_torch(model: Denoiser, onnx_path, encoder: TextEncoder):
    inputs = _unet_inputs(encoder)
    with torch.no_grad():
        want = model.eval()(*inputs)
    got = OnnxDenoiser(onnx_path)(*inputs)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=ONNX_VELOCITY_ATOL, rtol=0)


def test_onnx_velocity_matches_torch(tiny_engine, tmp_path):
    path = export_onnx(tiny_engine.denoise, tmp_path / "model.onnx")
    _assert_onnx_velocity_matches_torch(tiny_engine.denoise, path, tiny_engine.encoder)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["edge_small", "cloud_large"])
def test_onnx_velocity_matches_torch_on_the_committed_weights(name, encoder):
    """The committed engines' graphs (exported once into models/<name>/, git-ignored, as the
    benchmarks and Triton repository builder do)."""
    engine_dir = MODELS / name
    try:
        model, _ = load_denoiser(engine_dir)
    except WeightsNotFoundError as e:
        pytest.skip(str(e))
    _assert_onnx_velocity_matches_torch(model, ensure_onnx(engine_dir), encoder)


def test_onnx_runtime_matches_torch(tiny_engine, tmp_path):
    path = export_onnx(tiny_engine.denoise, tmp_path / "model.onnx")
    onnx_engine = Engine(tiny_engine.config, OnnxDenoiser(path), tiny_engine.encoder)
    seeds = list(range(len(PROMPTS)))
    # other kernels, UNet outputs ~1e-6 apart (above), as between batch sizes: the same rule
    assert_same_images(onnx_engine.generate(PROMPTS, seeds), tiny_engine.generate(PROMPTS, seeds))


def test_cli_generate_writes_pngs_and_rejects_bad_steps(tiny_engine, tmp_path, capsys):
    save_engine(tiny_engine.denoise, tiny_engine.config, tmp_path / "models" / "tiny")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square on black\n")
    common = ["--engine", "tiny", "--prompts-file", str(prompts), "--models-dir"]
    common += [str(tmp_path / "models"), "--out-dir", str(tmp_path / "out")]
    assert main(["engines", "generate", *common, "--scale", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0000.png", "0001.png"]
    capsys.readouterr()
    assert main(["engines", "generate", *common, "--steps", "0"]) == 2
    assert "steps is 0" in capsys.readouterr().err
    assert main(["engines", "generate", *common, "--sampler", "unipc"]) == 0
    capsys.readouterr()
    assert main(["engines", "generate", *common, "--sampler", "euler"]) == 2
    assert "sampler is 'euler'" in capsys.readouterr().err
    assert main(["engines", "generate", *common, "--engine", "nope"]) == 2
    assert "nope/config.json does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["edge_small", "--grounding-weight", "0.5"],
            "grounding_weight is 0.5, but edge_small is conditioned on the pooled prompt",
        ),
        (["edge_small", "--device", "gpu0"], "device is 'gpu0', expected cpu or cuda"),
        pytest.param(
            ["cloud_large", "--device", "cuda"],
            "device is 'cuda', but torch sees no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA"),
        ),
        (["edge_small", "--resume"], "cannot resume: "),
    ],
)
def test_cli_train_with_bad_flags_exits_2_in_one_line_before_training(
    flags, message, tmp_path, capsys, monkeypatch
):
    from t2i_router.engines import training

    def must_not_run(*args, **kwargs):
        raise AssertionError("the settings must be checked before the encoder loads or training")

    monkeypatch.setattr(training, "TextEncoder", must_not_run)
    monkeypatch.setattr(training.Trainer, "run", must_not_run)
    dirs = ["--models-dir", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache")]
    assert main(["engines", "train", *flags, *dirs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2i-router: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "models").exists()


def test_cli_train_with_bad_flags_ends_without_a_traceback_as_a_command(tmp_path):
    import subprocess
    import sys

    argv = ["engines", "train", "edge_small", "--grounding-weight", "0.5"]
    argv += ["--models-dir", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(
        [sys.executable, "-m", "t2i_router.cli", *argv], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("t2i-router: error: grounding_weight is 0.5, but edge_small is")


def test_engine_server_answers_each_request_alone(tiny_engine):
    from t2i_router.engines.serving import BadRequest, EngineFailure, EngineRequest, EngineServer

    def request(prompt: bytes, seed: int, steps=None) -> EngineRequest:
        return EngineRequest(
            np.array([[prompt]], dtype=object),
            np.array([[seed]], dtype=np.int64),
            None if steps is None else np.array([[steps]], dtype=np.int32),
        )

    server = EngineServer(tiny_engine)
    results = server.run(
        [
            request(b"a red circle", 1),
            request(b"   ", 2),
            request(b"a blue square", 3, steps=0),
            request(b"\xff\xfe", 4),
            request(b"a green triangle", 5, steps=2),
        ]
    )
    assert isinstance(results[1], BadRequest) and "PROMPT is empty" in str(results[1])
    assert isinstance(results[2], BadRequest) and "steps is 0" in str(results[2])
    assert isinstance(results[3], BadRequest) and "not UTF-8" in str(results[3])
    # each valid request is its own step group of one image: the UNet calls made alone, exactly
    np.testing.assert_array_equal(results[0], tiny_engine.generate(["a red circle"], [1]))
    np.testing.assert_array_equal(
        results[4], tiny_engine.generate(["a green triangle"], [5], steps=2)
    )

    def broken(*args):
        raise RuntimeError("out of memory")

    failing = EngineServer(Engine(tiny_engine.config, broken, tiny_engine.encoder))
    results = failing.run([request(b"a red circle", 1), request(b"", 2)])
    assert isinstance(results[0], EngineFailure) and "out of memory" in str(results[0])
    assert isinstance(results[1], BadRequest)  # its own error, not the batch's


def test_engine_loader_needs_the_encoder_of_a_named_text_encoder_model(tmp_path):
    """engines/ builds no Triton encoder itself: triton.backend injects the BLS one."""
    from t2i_router.engines.serving import ServingConfig, load_engine

    settings = ServingConfig(engine_dir=str(tmp_path), text_encoder="text_encoder")
    with pytest.raises(ValueError, match="'text_encoder'"):
        load_engine(settings)


def test_lr_factor_warms_up_holds_and_decays_when_asked():
    flat = TrainConfig(warmup_steps=10)
    assert lr_factor(flat, 0) == pytest.approx(0.1)
    assert lr_factor(flat, 9) == lr_factor(flat, 50_000) == 1.0
    cfg = TrainConfig(warmup_steps=10, lr_decay_from=100, lr_decay_steps=50, min_lr_factor=0.1)
    assert lr_factor(cfg, 100) == 1.0
    assert lr_factor(cfg, 125) == pytest.approx(0.55)  # half way down the cosine
    assert lr_factor(cfg, 150) == lr_factor(cfg, 10_000) == pytest.approx(0.1)
    assert all(lr_factor(cfg, s) >= lr_factor(cfg, s + 1) for s in range(10, 200))


def test_resume_with_a_new_recipe_records_the_change(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=16, batch_size=2)
    Trainer(tiny_engine_config(), tmp_path, cfg, encoder=encoder).run(
        max_steps=2, progress=False, evaluate_at_end=False
    )
    final = TrainConfig(prompt_pool=16, batch_size=2, ema_decay=0.999, lr_decay_from=2, threads=1)
    resumed = Trainer(tiny_engine_config(), tmp_path, final, encoder=encoder)
    resumed.load_checkpoint()
    assert resumed.recipe_changes == [
        {"step": 2, "changes": {"ema_decay": [0.995, 0.999], "lr_decay_from": [None, 2]}}
    ]
    resumed.run(max_steps=3, progress=False, evaluate_at_end=False)
    assert resumed.opt.param_groups[0]["lr"] < cfg.lr  # the decay took over from the checkpoint
    again = Trainer(tiny_engine_config(), tmp_path, final, encoder=encoder)
    again.load_checkpoint()
    assert again.recipe_changes == resumed.recipe_changes  # kept, and no new change


def test_resume_keeps_the_checkpoints_recipe_for_settings_not_given(encoder, tmp_path):
    with pytest.raises(TrainingError, match="does not exist"):
        checkpoint_recipe(tmp_path)
    final = TrainConfig(
        prompt_pool=16, batch_size=2, ema_decay=0.999, lr_decay_from=2, lr_decay_steps=7, threads=1
    )
    Trainer(tiny_engine_config(), tmp_path, final, encoder=encoder).run(
        max_steps=2, progress=False, evaluate_at_end=False
    )
    kept = checkpoint_recipe(tmp_path)
    assert kept == replace(final, threads=0)  # threads belong to a run, not to the recipe
    assert checkpoint_recipe(tmp_path, lr_decay_steps=9, threads=2) == replace(
        final, lr_decay_steps=9, threads=2
    )
    with pytest.raises(TrainingError, match="unknown training settings: lr_warmup"):
        checkpoint_recipe(tmp_path, lr_warmup=5)
    resumed = Trainer(tiny_engine_config(), tmp_path, kept, encoder=encoder)
    resumed.load_checkpoint()
    assert resumed.recipe_changes == []  # nothing silently reset to a default


def test_position_channels_are_added_without_changing_the_denoiser():
    without = replace(TINY["cross_attention"], position_channels=False)
    torch.manual_seed(0)
    old = Denoiser(without).eval()
    new = Denoiser(TINY["cross_attention"]).eval()
    new.load_state_dict(add_position_channels(old.state_dict()))
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([5, 500, 900])
    tokens, mask = torch.randn(3, 24, 384), torch.ones(3, 24)
    with torch.no_grad():
        # the same function; to float rounding only, as a 5-channel conv_in may be another
        # kernel that sums in another order (docs/engines.md, "Batch invariance")
        torch.testing.assert_close(new(x, t, tokens, mask), old(x, t, tokens, mask))
        new.unet.conv_in.weight[:, 3:] = 0.1  # once it uses them, the picture depends on place
        assert not torch.allclose(old(x, t, tokens, mask), new(x, t, tokens, mask))
    assert (
        position_maps()[0, 0, 0, 0] == -1 and position_maps()[0, 0, 0, -1] == 1
    )  # x: left to right
    with pytest.raises(ValueError, match="has 5 input channels, expected 3"):
        add_position_channels(new.state_dict())


def test_resume_adds_position_channels_to_a_checkpoint_without_them(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=16, batch_size=2)
    without = replace(
        tiny_engine_config(), unet=replace(TINY["cross_attention"], position_channels=False)
    )
    first = Trainer(without, tmp_path, cfg, encoder=encoder)
    first.run(max_steps=2, progress=False, evaluate_at_end=False)
    resumed = Trainer(tiny_engine_config(), tmp_path, cfg, encoder=encoder)
    resumed.load_checkpoint()
    assert resumed.recipe_changes == [
        {"step": 2, "changes": {"unet.position_channels": [False, True]}}
    ]
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
    tokens, mask = torch.randn(2, 24, 384), torch.ones(2, 24)
    with torch.no_grad():  # to float rounding: position channels change conv_in's kernel
        torch.testing.assert_close(resumed.ema(x, t, tokens, mask), first.ema(x, t, tokens, mask))
    resumed.run(max_steps=4, progress=False, evaluate_at_end=False)  # the optimizer state fits
    assert resumed.model.unet.conv_in.weight[:, 3:].abs().sum() > 0  # and it learns to use them
    # the other way round is not an upgrade: the coordinate weights would be lost
    with pytest.raises(TrainingError, match="another engine config"):
        Trainer(without, tmp_path, cfg, encoder=encoder).load_checkpoint()


def test_token_positions_are_added_without_changing_the_denoiser():
    without = replace(TINY["cross_attention"], token_positions=False, text_transformer=False)
    torch.manual_seed(0)
    old = Denoiser(without).eval()
    new = Denoiser(replace(without, token_positions=True)).eval()
    assert list(dict(new.named_parameters()))[-1] == "token_positions.weight"  # last: see resume
    new.load_state_dict({**old.state_dict(), "token_positions.weight": torch.zeros(24, 384)})
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 900])
    tokens, mask = torch.randn(2, 24, 384), torch.ones(2, 24)
    tokens[:, 10:], mask[:, 10:] = 0, 0  # padding, zeroed as the encoder does
    with torch.no_grad():
        assert torch.equal(old(x, t, tokens, mask), new(x, t, tokens, mask))
        new.token_positions.weight.fill_(0.5)
        moved = new.token_positions(tokens)
        assert torch.equal(moved[:, :10], tokens[:, :10] + 0.5)
        assert torch.equal(moved[:, 10:], tokens[:, 10:])  # padding stays zero
        assert not torch.equal(old(x, t, tokens, mask), new(x, t, tokens, mask))
    with pytest.raises(ValueError, match="token_positions needs cross-attention"):
        replace(TINY["pooled"], token_positions=True)


def test_text_transformer_is_added_without_changing_the_denoiser():
    without = replace(TINY["cross_attention"], text_transformer=False)
    torch.manual_seed(0)
    old = Denoiser(without).eval()
    new = Denoiser(replace(without, text_transformer=True)).eval()
    names = list(dict(new.named_parameters()))
    assert names[-1] == "text_transformer.out.bias"  # last: see resume
    fresh = {k: v for k, v in new.state_dict().items() if k.startswith("text_transformer.")}
    new.load_state_dict({**old.state_dict(), **fresh})
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([5, 900, 999])
    tokens, mask = torch.randn(3, 24, 384), torch.ones(3, 24)
    tokens[:, 10:], mask[:, 10:] = 0, 0  # padding, zeroed as the encoder does
    with torch.no_grad():
        assert torch.equal(old(x, t, tokens, mask), new(x, t, tokens, mask))
        torch.manual_seed(1)
        for p in new.text_transformer.out.parameters():
            p.normal_(0.0, 0.1)
        mixed = new.text_transformer(tokens)
        assert torch.equal(mixed[:, 10:], tokens[:, 10:])  # padding stays zero
        assert not torch.allclose(mixed[:, :10], tokens[:, :10])
        # each prompt alone: padding keys are masked, other prompts unseen
        longer = tokens.clone()
        longer[0, 10:12] = torch.randn(2, 384)
        assert not torch.allclose(new.text_transformer(longer)[0, :10], mixed[0, :10])
        assert torch.allclose(new.text_transformer(longer)[1:], mixed[1:], atol=1e-6)
        assert torch.allclose(new.text_transformer(tokens[1:2]), mixed[1:2], atol=1e-6)
        assert not torch.equal(old(x, t, tokens, mask), new(x, t, tokens, mask))
    with pytest.raises(ValueError, match="text_transformer needs cross-attention"):
        replace(TINY["pooled"], text_transformer=True)


def test_resume_adds_token_positions_and_the_text_transformer_to_a_checkpoint(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=16, batch_size=2)
    unet = replace(
        TINY["cross_attention"],
        position_channels=False,
        token_positions=False,
        text_transformer=False,
    )
    first = Trainer(replace(tiny_engine_config(), unet=unet), tmp_path, cfg, encoder=encoder)
    first.run(max_steps=2, progress=False, evaluate_at_end=False)
    resumed = Trainer(tiny_engine_config(), tmp_path, cfg, encoder=encoder)
    resumed.load_checkpoint()  # all three features at once
    assert resumed.recipe_changes == [
        {
            "step": 2,
            "changes": {
                "unet.position_channels": [False, True],
                "unet.token_positions": [False, True],
                "unet.text_transformer": [False, True],
            },
        }
    ]
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
    tokens, mask = torch.randn(2, 24, 384), torch.ones(2, 24)
    with torch.no_grad():  # to float rounding: position channels change conv_in's kernel
        torch.testing.assert_close(resumed.ema(x, t, tokens, mask), first.ema(x, t, tokens, mask))
    resumed.run(max_steps=4, progress=False, evaluate_at_end=False)  # the optimizer state fits
    assert resumed.model.token_positions.weight.abs().sum() > 0  # and it learns them
    assert resumed.model.text_transformer.out.weight.abs().sum() > 0
    resumed.save_checkpoint()
    again = Trainer(tiny_engine_config(), tmp_path, cfg, encoder=encoder)
    again.load_checkpoint()  # no upgrade the second time
    assert len(again.recipe_changes) == 1
    assert torch.equal(again.model.token_positions.weight, resumed.model.token_positions.weight)


def test_a_run_keeps_the_unet_features_its_checkpoint_has(encoder, tmp_path):
    from t2i_router.cli import UNET_FEATURES
    from t2i_router.engines.checkpoints import UPGRADES, run_engine_config

    assert UNET_FEATURES == UPGRADES
    plain = replace(TINY["cross_attention"], token_positions=False, text_transformer=False)
    config = replace(tiny_engine_config(), unet=plain)
    assert run_engine_config(config, tmp_path, resume=True) == config  # no checkpoint yet
    added = run_engine_config(config, tmp_path, resume=False, features=["text_transformer"])
    assert added.unet == replace(plain, text_transformer=True)
    cfg = TrainConfig(prompt_pool=16, batch_size=2)
    Trainer(added, tmp_path, cfg, encoder=encoder).run(
        max_steps=1, progress=False, evaluate_at_end=False
    )
    kept = run_engine_config(config, tmp_path, resume=True)  # the flag left out on resume
    assert kept == added
    both = run_engine_config(config, tmp_path, resume=True, features=["token_positions"])
    assert both.unet == replace(plain, text_transformer=True, token_positions=True)
    assert run_engine_config(config, tmp_path, resume=False) == config  # a fresh run: as asked
    with pytest.raises(TrainingError, match="unknown UNet features: wings"):
        run_engine_config(config, tmp_path, resume=True, features=["wings"])


def test_level_weights_choose_which_complexities_are_drawn(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=40, batch_size=16, level_weights=(0, 0, 0, 1))
    trainer = Trainer(tiny_engine_config(), tmp_path, cfg, encoder=encoder)
    for step in range(3):
        drawn = {trainer.pairs[i][1].complexity for i in trainer.batch(step).pool_index}
        assert drawn == {"relation"}
    uniform = Trainer(
        tiny_engine_config(), tmp_path / "u", replace(cfg, level_weights=None), encoder=encoder
    )
    assert len({uniform.pairs[i][1].complexity for i in uniform.batch(0).pool_index}) > 1
    assert TrainConfig(level_weights=[1, 2, 3, 4]).level_weights == (1.0, 2.0, 3.0, 4.0)
    for bad in ((1, 1, 1), (1, 1, -1, 1), (0, 0, 0, 0)):
        with pytest.raises(TrainingError, match=r"level_weights is \["):
            TrainConfig(level_weights=bad)


def test_high_noise_share_moves_only_the_timesteps(encoder, tmp_path):
    cfg = TrainConfig(prompt_pool=40, batch_size=64)
    uniform = Trainer(tiny_engine_config(), tmp_path / "u", cfg, encoder=encoder).batch(3)
    for share, low in ((1.0, 64), (0.5, 16)):
        skewed = Trainer(
            tiny_engine_config(),
            tmp_path / f"s{share}",
            replace(cfg, high_noise_share=share, high_noise_from=900),
            encoder=encoder,
        ).batch(3)
        for field in ("images", "pool_index", "drop", "noise", "masks"):
            assert np.array_equal(getattr(skewed, field), getattr(uniform, field)), field
        high = skewed.timesteps >= 900
        assert high.sum() >= low and skewed.timesteps.max() < 1000
        # the rest keep the uniform draw
        kept = skewed.timesteps == uniform.timesteps
        assert np.all(high | kept)
    assert (uniform.timesteps >= 900).sum() < 16  # a tenth of 64 expected


def test_high_noise_settings_are_checked(encoder, tmp_path):
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(TrainingError, match="high_noise_share is"):
            TrainConfig(high_noise_share=bad)
    with pytest.raises(TrainingError, match="high_noise_from is -1"):
        TrainConfig(high_noise_from=-1)
    with pytest.raises(TrainingError, match="high_noise_from is 1000: expected below the 1000"):
        Trainer(tiny_engine_config(), tmp_path, TrainConfig(high_noise_from=1000), encoder=encoder)


def test_cli_high_noise_and_unet_feature_flags_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["engines", "train", "cloud_large", "--high-noise-share", "2"])
    assert "2.0 must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["engines", "train", "cloud_large", "--high-noise-from", "-5"])
    assert "-5 must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["engines", "train", "cloud_large", "--unet-feature", "wings"])
    assert "invalid choice: 'wings'" in capsys.readouterr().err


def test_cli_level_weights_need_four_non_negative_numbers(capsys):
    with pytest.raises(SystemExit):
        main(["engines", "train", "cloud_large", "--level-weights", "1", "1", "-2", "1"])
    assert "-2.0 must be a finite number >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["engines", "train", "cloud_large", "--level-weights", "1", "1"])
    assert "expected 4 arguments" in capsys.readouterr().err
